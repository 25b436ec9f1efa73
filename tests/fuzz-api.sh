#!/usr/bin/env bash
# tests/fuzz-api.sh - property-based fuzzing of the management API with Schemathesis,
# driven by the OpenAPI document the server serves.
#
# Usage, as root after ./setup.sh (Docker with the runsc runtime running):
#
#     tests/fuzz-api.sh
#
# It installs a pinned Schemathesis (tests/fuzz/requirements.txt) into a venv under /var/tmp
# (once; python3-venv is installed with apt-get when missing), builds mcp-runner and the
# fixture MCP server image, and starts mcp-runner on 127.0.0.1 (a free port, a temporary
# database, instance id $FUZZ_INSTANCE_ID, a random API key, --cleanup-on-shutdown). Once
# /readyz answers 200 it checks that /api/openapi.json equals the committed
# openapi/openapi.json, then runs every phase of Schemathesis (examples, coverage, fuzzing,
# stateful with the links Schemathesis infers) on every operation, authenticated with
# X-API-Key, with the checks
#
#     not_a_server_error            no 5xx
#     status_code_conformance       only documented status codes
#     content_type_conformance      only documented content types
#     response_schema_conformance   bodies match the documented schemas
#     use_after_free                a deleted deployment is gone (stateful phase)
#     ensure_resource_availability  a created deployment can be fetched (stateful phase)
#
# tests/fuzz/hooks.py lets creates succeed (a share of them use the local fixture image, as no
# registry is reachable), drops the one environmental failure (502 when a pull cannot reach
# the registry) and counts the responses. Then mcp-runner is stopped with SIGTERM and the
# script fails unless everything of the instance is gone: containers and networks labelled
# mcp-runner.instance=<id>, host users whose GECOS starts with mcp-runner/<id>/, and rows.
#
# The last line is `fuzz: N cases, M failures`; the exit status is non-zero on any failure.
# Reports (Schemathesis JSON and JUnit, response counts, mcp-runner's log) of the last run stay
# in $FUZZ_PREFIX/last-run. tests/fuzz/schemathesis.toml masks only the API key in the output
# (the key is made per run and dies with the server anyway).
#
# Environment: CARGO_TARGET_DIR (default /var/tmp/mcp-runner-target),
# FUZZ_PREFIX (venv and reports, default /var/tmp/mcp-runner-fuzz),
# FUZZ_PROFILE (cargo profile of mcp-runner, default dev: what `cargo test` built, with
# overflow checks), FUZZ_MAX_EXAMPLES (per operation and phase, default 100),
# FUZZ_MAX_TIME (time budget of the Schemathesis run in seconds, default 240; fuzzing and
# stateful testing repeat until it is spent),
# FUZZ_SEED (Schemathesis seed; random by default, printed for a replay),
# FUZZ_INSTANCE_ID (default fuzz-api), RUST_LOG (mcp-runner's log filter, default info).
set -euo pipefail

banner() { printf '\n==== %s ====\n' "$*"; }
fail() {
    echo "fuzz-api.sh: ERROR: $*" >&2
    exit 1
}

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
STARTED=$SECONDS

readonly SCHEMATHESIS_VERSION=4.32.5
readonly REQUIREMENTS=$ROOT/tests/fuzz/requirements.txt
readonly HOOKS=$ROOT/tests/fuzz/hooks.py
readonly CONFIG=$ROOT/tests/fuzz/schemathesis.toml
readonly PREFIX=${FUZZ_PREFIX:-/var/tmp/mcp-runner-fuzz}
readonly VENV=$PREFIX/venv
readonly RESULTS=$PREFIX/last-run
readonly PROFILE=${FUZZ_PROFILE:-dev}
readonly MAX_EXAMPLES=${FUZZ_MAX_EXAMPLES:-100}
readonly MAX_TIME=${FUZZ_MAX_TIME:-240}
readonly INSTANCE=${FUZZ_INSTANCE_ID:-fuzz-api}
readonly FIXTURE_IMAGE=mcp-runner-fuzz-fixture:latest
# A slice of setup.sh's default pool (so the host firewall covers it) and a UID range of its
# own: the fuzzer's deployments never compete with other instances for either.
readonly NETWORK_POOL=10.240.240.0/20
readonly UID_RANGE=3960000-3964999
readonly TRIPLE=x86_64-unknown-linux-gnu
readonly CHECKS=not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,use_after_free,ensure_resource_availability
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/mcp-runner-target}"

SYSTEM_PYTHON=/usr/bin/python3
PY=$VENV/bin/python
ST=$VENV/bin/st

# ---------------------------------------------------------------------------
# Clean-up: mcp-runner (SIGTERM: it deletes its deployments itself), then, only if something
# is still there, whatever of the instance is left. Runs on every exit; twice is harmless.
# ---------------------------------------------------------------------------
WORK=""
RUNNER_PID=""

stop_runner() {
    [[ -n $RUNNER_PID ]] || return 0
    if kill -0 "$RUNNER_PID" 2>/dev/null; then
        echo "stopping mcp-runner (pid $RUNNER_PID, SIGTERM)"
        kill -TERM "$RUNNER_PID"
        local deadline=$((SECONDS + 180))
        while kill -0 "$RUNNER_PID" 2>/dev/null && ((SECONDS < deadline)); do
            sleep 0.2
        done
        if kill -0 "$RUNNER_PID" 2>/dev/null; then
            echo "mcp-runner did not stop within 180 s: SIGKILL"
            kill -KILL "$RUNNER_PID"
        fi
    fi
    RUNNER_STATUS=0
    wait "$RUNNER_PID" 2>/dev/null || RUNNER_STATUS=$?
    RUNNER_PID=""
}

# Host users of the instance (name per line), from the GECOS field mcp-runner writes.
instance_users() {
    getent passwd | awk -F: -v p="mcp-runner/$INSTANCE/" 'index($5, p) == 1 { print $1 }'
}

sweep_instance() {
    local label="label=mcp-runner.instance=$INSTANCE" left user
    left=$(docker ps -aq --filter "$label" 2>/dev/null || true)
    if [[ -n $left ]]; then
        echo "removing containers of instance $INSTANCE: $(tr '\n' ' ' <<<"$left")"
        # shellcheck disable=SC2086
        docker rm -f $left >/dev/null || true
    fi
    left=$(docker network ls -q --filter "$label" 2>/dev/null || true)
    if [[ -n $left ]]; then
        echo "removing networks of instance $INSTANCE: $(tr '\n' ' ' <<<"$left")"
        # shellcheck disable=SC2086
        docker network rm $left >/dev/null || true
    fi
    for user in $(instance_users); do
        echo "removing host user $user of instance $INSTANCE"
        userdel "$user" >/dev/null 2>&1 || true
        groupdel "$user" >/dev/null 2>&1 || true
    done
}

cleanup() {
    set +e
    stop_runner
    if command -v docker >/dev/null 2>&1; then
        sweep_instance
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
[[ $EUID -eq 0 ]] || fail "run as root (mcp-runner adds host users)"
if ! command -v cargo >/dev/null 2>&1 && [[ -f "$HOME/.cargo/env" ]]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
command -v cargo >/dev/null 2>&1 || fail "cargo not found (PATH or ~/.cargo/env)"
command -v docker >/dev/null 2>&1 || fail "docker not found: run ./setup.sh first"
timeout 20 docker info >/dev/null 2>&1 || fail "the Docker daemon does not answer: run ./setup.sh first"
docker info --format '{{json .Runtimes}}' | grep -q '"runsc"' ||
    fail "Docker has no runsc runtime: run ./setup.sh first"
apt_install() {
    echo "installing with apt-get: $*"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
command -v curl >/dev/null 2>&1 || apt_install curl
# The distribution's interpreter, as setup.sh uses, not whatever python3 comes first in PATH.
[[ -x $SYSTEM_PYTHON ]] || apt_install python3
echo "cargo: $(cargo --version)"
echo "docker: $(docker version --format '{{.Server.Version}}')"
echo "python: $("$SYSTEM_PYTHON" --version)"
echo "CARGO_TARGET_DIR=$CARGO_TARGET_DIR"

# ---------------------------------------------------------------------------
banner "Schemathesis $SCHEMATHESIS_VERSION (venv $VENV)"
grep -qx "schemathesis==$SCHEMATHESIS_VERSION" "$REQUIREMENTS" ||
    fail "$REQUIREMENTS does not pin schemathesis==$SCHEMATHESIS_VERSION"
STAMP=$VENV/.installed
WANT="$("$SYSTEM_PYTHON" --version) $(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)"
if [[ -f $STAMP && "$(cat "$STAMP")" == "$WANT" && -x $ST ]]; then
    echo "already installed"
else
    rm -rf "$VENV"
    mkdir -p "$PREFIX"
    # Debian ships venv's pip bootstrap separately, in python3-venv.
    if ! "$SYSTEM_PYTHON" -m venv "$VENV" >/dev/null 2>&1; then
        rm -rf "$VENV"
        apt_install python3-venv
        "$SYSTEM_PYTHON" -m venv "$VENV" || fail "$SYSTEM_PYTHON cannot make a venv"
    fi
    "$PY" -m pip install --quiet --disable-pip-version-check --no-input -r "$REQUIREMENTS"
    echo "$WANT" >"$STAMP"
fi
got=$("$ST" --version)
[[ $got == *" $SCHEMATHESIS_VERSION" ]] || fail "unexpected Schemathesis: $got"
echo "$got"

# ---------------------------------------------------------------------------
banner "mcp-runner ($PROFILE profile)"
cargo build --locked --profile "$PROFILE" --bin mcp-runner
profile_dir=$PROFILE
[[ $PROFILE == dev ]] && profile_dir=debug
RUNNER_BIN=$CARGO_TARGET_DIR/$profile_dir/mcp-runner
[[ -x $RUNNER_BIN ]] || fail "no mcp-runner binary at $RUNNER_BIN"

# As tests/e2e/support/fixture.rs builds it (same target directory: after `cargo test` this is
# a no-op): a static binary, packed FROM scratch into an image of this script's own.
banner "Fixture image $FIXTURE_IMAGE"
FIXTURE_TARGET=$CARGO_TARGET_DIR/tmp/fixture-build
CARGO_TARGET_DIR=$FIXTURE_TARGET \
    CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS='-C target-feature=+crt-static' \
    cargo build --release --locked -p mcp-fixture --target "$TRIPLE"
WORK=$(mktemp -d /tmp/mcp-runner-fuzz.XXXXXX)
mkdir "$WORK/image"
cp "$FIXTURE_TARGET/$TRIPLE/release/mcp-fixture" "$WORK/image/mcp-fixture"
printf 'FROM scratch\nCOPY mcp-fixture /mcp-fixture\nENTRYPOINT ["/mcp-fixture"]\nCMD ["stdio"]\n' \
    >"$WORK/image/Dockerfile"
DOCKER_BUILDKIT=0 docker build -q -t "$FIXTURE_IMAGE" "$WORK/image" 2>/dev/null
rm -rf "$WORK/image"

# ---------------------------------------------------------------------------
banner "Start mcp-runner (instance $INSTANCE)"
sweep_instance # what an interrupted earlier run may have left
rm -rf "$RESULTS"
mkdir -p "$RESULTS"
DB=$WORK/app.db
PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
API_KEY=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
BASE=http://127.0.0.1:$PORT
RUNNER_LOG=$RESULTS/mcp-runner.log
env PORT="$PORT" BIND_IP=127.0.0.1 API_KEY="$API_KEY" DB_PATH="$DB" INSTANCE_ID="$INSTANCE" \
    NETWORK_POOL="$NETWORK_POOL" UID_RANGE="$UID_RANGE" LOG_FORMAT=text RUST_LOG="${RUST_LOG:-info}" \
    "$RUNNER_BIN" --cleanup-on-shutdown >"$RUNNER_LOG" 2>&1 &
RUNNER_PID=$!
echo "mcp-runner pid $RUNNER_PID on $BASE (log: $RUNNER_LOG)"
deadline=$((SECONDS + 120))
until [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$BASE/readyz" || true)" == 200 ]]; do
    if ! kill -0 "$RUNNER_PID" 2>/dev/null; then
        tail -n 40 "$RUNNER_LOG" >&2
        fail "mcp-runner exited during start-up"
    fi
    if ((SECONDS >= deadline)); then
        tail -n 40 "$RUNNER_LOG" >&2
        fail "/readyz did not answer 200 within 120 s"
    fi
    sleep 0.2
done
echo "ready: $(curl -s --max-time 5 "$BASE/readyz")"

banner "Served document against openapi/openapi.json"
curl -sf --max-time 10 -o "$RESULTS/openapi.served.json" "$BASE/api/openapi.json" ||
    fail "GET /api/openapi.json failed"
"$PY" - "$RESULTS/openapi.served.json" "$ROOT/openapi/openapi.json" <<'EOF'
import json, sys
with open(sys.argv[1]) as served, open(sys.argv[2]) as committed:
    if json.load(served) != json.load(committed):
        sys.exit("the served document differs from openapi/openapi.json "
                 "(regenerate it with `mcp-runner openapi > openapi/openapi.json`)")
print("equal (as JSON)")
EOF

# ---------------------------------------------------------------------------
banner "Schemathesis: every operation, phases examples, coverage, fuzzing, stateful"
SEED=${FUZZ_SEED:-$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')}
echo "seed $SEED, at most $MAX_EXAMPLES examples per operation and phase, time budget $MAX_TIME s"
echo "checks: $CHECKS"
ST_STATUS=0
FUZZ_STARTED=$SECONDS
# From $RESULTS: Schemathesis keeps its crash files (for `st replay`) in ./.schemathesis.
(cd "$RESULTS" && SCHEMATHESIS_HOOKS=$HOOKS FUZZ_FIXTURE_IMAGE=$FIXTURE_IMAGE \
    FUZZ_STATS=$RESULTS/responses.json "$ST" --no-color --config-file "$CONFIG" run "$BASE/api/openapi.json" \
    --header "X-API-Key: $API_KEY" \
    --checks "$CHECKS" \
    --phases examples,coverage,fuzzing,stateful \
    --max-examples "$MAX_EXAMPLES" \
    --max-time "$MAX_TIME" \
    --seed "$SEED" \
    --workers 1 \
    --request-timeout 150 \
    --generation-database none \
    --report json,junit \
    --report-json-path "$RESULTS/schemathesis.json" \
    --report-junit-path "$RESULTS/junit.xml" \
    </dev/null 2>&1) | tee "$RESULTS/schemathesis.log" || ST_STATUS=$?
FUZZ_SECONDS=$((SECONDS - FUZZ_STARTED))
echo "schemathesis exit status $ST_STATUS after $FUZZ_SECONDS s"

# ---------------------------------------------------------------------------
banner "Stop mcp-runner and look for leftovers of instance $INSTANCE"
RUNNER_STATUS=0
stop_runner
PROBLEMS=()
((RUNNER_STATUS == 0)) || PROBLEMS+=("mcp-runner exited with status $RUNNER_STATUS on SIGTERM")
grep -q 'shutdown complete' "$RUNNER_LOG" || PROBLEMS+=("mcp-runner did not log 'shutdown complete'")
if grep -q 'panicked' "$RUNNER_LOG"; then
    PROBLEMS+=("mcp-runner panicked: $(grep -m1 'panicked' "$RUNNER_LOG")")
fi
label="label=mcp-runner.instance=$INSTANCE"
left=$(docker ps -aq --filter "$label" | tr '\n' ' ')
[[ -z $left ]] || PROBLEMS+=("containers left: $left")
left=$(docker network ls -q --filter "$label" | tr '\n' ' ')
[[ -z $left ]] || PROBLEMS+=("networks left: $left")
left=$(instance_users | tr '\n' ' ')
[[ -z $left ]] || PROBLEMS+=("host users left: $left")
if rows=$("$PY" -c 'import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute("select count(*) from deployments").fetchone()[0])' "$DB" 2>&1); then
    [[ $rows == 0 ]] || PROBLEMS+=("rows left in the database: $rows")
else
    PROBLEMS+=("cannot read the database: $rows")
fi
if ((${#PROBLEMS[@]} == 0)); then
    echo "nothing left: no containers, networks, host users or rows of $INSTANCE"
fi

# ---------------------------------------------------------------------------
banner "Summary"
SUMMARY=$RESULTS/summary.txt
"$PY" - "$RESULTS/schemathesis.json" "$RESULTS/responses.json" "$SUMMARY" <<'EOF'
import json, sys
report_path, responses_path, out_path = sys.argv[1:]
try:
    with open(report_path) as f:
        report = json.load(f)
except (OSError, ValueError) as e:
    print(f"no Schemathesis report: {e}")
    with open(out_path, "w") as out:
        out.write("0 1 0\n")  # no cases counted, one failure (the missing report)
    sys.exit(0)
cases = report["test_cases"]
print(f"Schemathesis {report['schemathesis_version']}, {report['running_time']:.0f} s, "
      f"stop reason {report['stop_reason']}")
print(f"operations: {report['operations']['tested']} tested of {report['operations']['total']}")
for name, phase in report["phases"].items():
    print(f"phase {name}: {phase['status']}" + (f" ({phase['skip_reason']})" if phase.get("skip_reason") else ""))
print(f"cases: {cases['generated']} generated, {cases['with_failures']} with failures, "
      f"{cases['unique_failures']} unique failures, {cases['errored']} errored")
if report.get("filtered"):
    print(f"failures dropped by tests/fuzz/hooks.py (pull could not reach a registry): {report['filtered']}")
for failure in report["failures"]:
    print(f"FAILURE {failure['code']} {failure['title']}: {failure['count']}x on {', '.join(failure['operations'])}")
for error in report["errors"]:
    print(f"ERROR {json.dumps(error)[:500]}")
for name, entries in report.get("warnings", {}).items():
    if entries:
        print(f"warning {name}: {json.dumps(entries)[:300]}")
try:
    with open(responses_path) as f:
        stats = json.load(f)
    print("responses (method path status: count):")
    undocumented = 0
    for key, count in stats["responses"].items():
        if key.endswith(" 405"):
            undocumented += count
        else:
            print(f"  {key}: {count}")
    print(f"  405 to undocumented methods (coverage phase): {undocumented}")
    print(f"creates sent with the fixture image: {stats['fixture_image_substitutions']}")
    blocked = sum(c for k, c in stats["responses"].items() if k.endswith(" 403"))
except (OSError, ValueError, KeyError) as e:
    print(f"no response counts: {e}")
    blocked = 0
with open(out_path, "w") as out:
    out.write(f"{cases['generated']} {cases['unique_failures'] + len(report['errors'])} {blocked}\n")
EOF
read -r CASES FAILURES BLOCKED <"$SUMMARY"
if ((BLOCKED > 0)); then
    PROBLEMS+=("$BLOCKED answers were 403: the fuzzer's address was locked out, the run tested little")
fi
if ((ST_STATUS != 0 && FAILURES == 0)); then
    PROBLEMS+=("Schemathesis exited with status $ST_STATUS without reporting a failure")
fi
for problem in "${PROBLEMS[@]}"; do
    echo "FAILURE $problem"
done
FAILURES=$((FAILURES + ${#PROBLEMS[@]}))
echo "results: $RESULTS"
echo "runtime: $((SECONDS - STARTED)) s (Schemathesis $FUZZ_SECONDS s)"
echo "fuzz: $CASES cases, $FAILURES failures"
((FAILURES == 0))
