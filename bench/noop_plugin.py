"""``bench-noop``: a plugin (API version 1) that implements every phase and does nothing in any,
for the plugin row of bench/run.py: what the plugin machinery itself costs a request.

Each phase only adds one to a per-phase counter (so the bench can tell that every phase really
ran, ~40 ns each); the counts are written to stderr (the gateway's log file in the bench) once
the reactor has shut down, as one line ``bench-noop calls: {"on_request": N, ...}``. Because it
implements ``on_response_body``, the gateway no longer knows a response's length in advance and
sends every response body chunked: part of what this row measures.

Made visible to the gateway by bench/twistd_with_plugin.py (``avx_twisted.plugins.register``),
not through an entry point: nothing is installed.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Optional

NAME = "bench-noop"
CALLS = {
    "on_request": 0,
    "on_upstream_request": 0,
    "on_response": 0,
    "on_response_body": 0,
    "on_log": 0,
    "on_error": 0,
}
_trigger_added = False


def _report() -> None:
    # After the drain, so the counts are final; straight to the process's stderr (the log file
    # in the bench), twistd's log observers may already be gone.
    print(f"{NAME} calls: {json.dumps(CALLS)}", file=sys.__stderr__, flush=True)


class NoopPlugin:
    """The ``bench-noop`` plugin: no config keys."""

    api_version = 1

    def __init__(self, config: Any) -> None:
        global _trigger_added
        if not _trigger_added:  # the reactor twistd installed, once the config is loaded
            from twisted.internet import reactor

            reactor.addSystemEventTrigger("after", "shutdown", _report)  # type: ignore[attr-defined]
            _trigger_added = True

    def on_request(self, request: Any, ctx: Any) -> Optional[Any]:
        CALLS["on_request"] += 1
        return None

    def on_upstream_request(self, request: Any, ctx: Any) -> None:
        CALLS["on_upstream_request"] += 1

    def on_response(self, response: Any, ctx: Any) -> None:
        CALLS["on_response"] += 1

    def on_response_body(self, data: bytes, last: bool, ctx: Any) -> bytes:
        CALLS["on_response_body"] += 1
        return data

    def on_log(self, ctx: Any, summary: Any) -> None:
        CALLS["on_log"] += 1

    def on_error(self, ctx: Any, error: Any) -> None:
        CALLS["on_error"] += 1
