"""Schemathesis hooks of tests/fuzz-api.sh (loaded through SCHEMATHESIS_HOOKS).

1. Local images. No registry is reachable from the test hosts, so a create with any image
   that is not present locally ends at the pull. To let creates succeed (and the stateful
   phase follow POST -> GET/DELETE with real ids), the documented example image and a fixed,
   hash-chosen third of the other generated image strings are replaced, just before the
   request is sent, with the fixture image named by FUZZ_FIXTURE_IMAGE. The choice depends on
   the string only, so a failing case replays and shrinks the same way.

2. The one accepted 5xx. A create whose pull fails because the registry cannot be reached is
   answered 502 (documented: "Docker or the registry refused"). That is the environment, not
   the product, so exactly that failure is dropped: status 502, on POST /api/deployment, with
   the pull message and a network-level cause. Every other 5xx stays a failure.

3. Tally. Every response is counted by method sent, path and status, and written as JSON to
   FUZZ_STATS when the run ends (tests/fuzz-api.sh prints it and fails on any 403: five
   missing keys in a row would lock the fuzzer's address out for a minute).
"""

import atexit
import json
import os
import re
import threading
import zlib
from collections import Counter

import schemathesis

FIXTURE_IMAGE = os.environ["FUZZ_FIXTURE_IMAGE"]
STATS_PATH = os.environ["FUZZ_STATS"]
EXAMPLE_IMAGE = "mcp/everything:latest"
CREATE = ("POST", "/api/deployment")
# What Docker says when the registry's name or address cannot be reached.
UNREACHABLE_REGISTRY = re.compile(
    r"could not be pulled: .*(no such host|dial tcp|connection refused|i/o timeout"
    r"|network is unreachable|TLS handshake timeout|Client.Timeout)"
)

_lock = threading.Lock()
_responses = Counter()
_substituted = 0
_pull_unreachable = 0


def _operation(case):
    # The method sent: the coverage phase also tries undocumented methods on each path.
    return (str(case.method).upper(), case.operation.path)


def _uses_fixture(image):
    if image == EXAMPLE_IMAGE:
        return True
    digest = zlib.crc32(image.encode("utf-8", "surrogatepass"))
    return digest % 3 == 0


@schemathesis.hook
def before_call(context, case, kwargs):
    global _substituted
    if _operation(case) != CREATE or not isinstance(case.body, dict):
        return
    image = case.body.get("image")
    if isinstance(image, str) and _uses_fixture(image):
        case.body["image"] = FIXTURE_IMAGE
        with _lock:
            _substituted += 1


@schemathesis.hook
def after_call(context, case, response):
    method, path = _operation(case)
    with _lock:
        _responses[f"{method} {path} {response.status_code}"] += 1


@schemathesis.hook
def filter_failure(context, failure, case, response):
    global _pull_unreachable
    environmental = (
        failure.code == "ST101"
        and _operation(case) == CREATE
        and response is not None
        and response.status_code == 502
        and UNREACHABLE_REGISTRY.search(response.text or "") is not None
    )
    if environmental:
        with _lock:
            _pull_unreachable += 1
    return not environmental


@atexit.register
def _write_stats():
    with _lock:
        stats = {
            "responses": dict(sorted(_responses.items())),
            "fixture_image_substitutions": _substituted,
            "dropped_pull_unreachable_502": _pull_unreachable,
        }
    with open(STATS_PATH, "w", encoding="utf-8") as out:
        json.dump(stats, out, indent=2)
        out.write("\n")
