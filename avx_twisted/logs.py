"""Access logs and request IDs, through ``twisted.logger``.

One event per request goes to a dedicated ``Logger`` whose only observer is the access log: a
bounded queue drained by one writer thread, so a slow disk or a blocked stdout never stalls the
reactor and a flood never grows memory without bound (lines over the bound are dropped and
counted). ``json`` writes one object per line; ``text`` a combined-log-style line.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import re
import threading
import time
from typing import IO, Any, Callable, Iterable

from twisted.internet.interfaces import IReactorTime
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    LogPublisher,
)
from zope.interface import implementer

#: A client's X-Request-ID is kept when it is this sane; otherwise one is made.
_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:@/+=-]{1,128}$")
#: The fields of an access event, in the order JSON lines show them.
FIELDS = (
    "time",
    "request_id",
    "client_ip",
    "method",
    "host",
    "path",
    "protocol",
    "status",
    "route",
    "upstream",
    "upstream_status",
    "request_bytes",
    "response_bytes",
    "duration_ms",
    "upstream_duration_ms",
    "retries",
    "user",
    "user_agent",
    "referer",
    "trace_id",
    "span_id",
    "error",
    "tls_version",
    "client_cert_subject",
    "client_cert_sha256",
    "grpc_service",
    "grpc_method",
    "grpc_status",
    "cache",
    "graphql",
)
#: ``logging.level`` names and their twisted.logger levels.
LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
    "critical": LogLevel.critical,
}


#: Queued to the writer thread: reopen the file before the next batch.
_REOPEN = "reopen"

_ids = itertools.count(1)
_id_prefix = [b"", -1]  # per process (reset in a forked worker): 16 random hex digits


def request_id(incoming: list[bytes] | None) -> bytes:
    """The request's ID: the client's ``X-Request-ID`` when sane, else 32 hex digits.

    Made IDs are a random per-process prefix and a counter: unique without asking the OS for
    randomness on every request.
    """
    if incoming:
        candidate = incoming[-1]
        if _REQUEST_ID.match(candidate):
            return candidate
    pid = os.getpid()
    if _id_prefix[1] != pid:
        _id_prefix[0] = os.urandom(8).hex().encode("ascii")
        _id_prefix[1] = pid
    return _id_prefix[0] + b"%016x" % next(_ids)


def _format_json(event: dict[str, Any]) -> str:
    return json.dumps({k: event.get(k) for k in FIELDS}, separators=(",", ":"))


def _format_text(event: dict[str, Any]) -> str:
    when = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(event["time"]))
    return (
        '{client_ip} - {user} [{when}] "{method} {path} {protocol}" {status} {response_bytes} '
        '"{referer}" "{agent}" rt={rt} urt={urt} route={route} upstream={upstream} '
        "rid={request_id}".format(
            client_ip=event["client_ip"],
            user=event.get("user") or "-",
            when=when,
            method=event["method"],
            path=event["path"],
            protocol=event.get("protocol", "HTTP/1.1"),
            status=event["status"],
            response_bytes=event["response_bytes"],
            referer=event.get("referer") or "-",
            agent=event.get("user_agent") or "-",
            rt="%.3f" % (event["duration_ms"] / 1000.0),
            urt="-"
            if event.get("upstream_duration_ms") is None
            else "%.3f" % (event["upstream_duration_ms"] / 1000.0),
            route=event["route"],
            upstream=event.get("upstream") or "-",
            request_id=event["request_id"],
        )
        + (f" tls={event['tls_version']}" if event.get("tls_version") else "")
    )


@implementer(ILogObserver)
class AccessLogWriter:
    """An ``ILogObserver`` writing access events as lines from a thread, in batches.

    Events are collected on the reactor thread (an append) and handed to the writer thread in one
    batch every ``flush_s``: the thread wakes a few times a second rather than once per request,
    which would cost the reactor a GIL hand-over each time. At most ``max_queue`` events wait;
    beyond that they are dropped and counted in ``dropped``.
    """

    def __init__(
        self,
        target: str,
        fmt: str = "json",
        max_queue: int = 10_000,
        clock: IReactorTime | None = None,
        flush_s: float = 0.1,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock  # type: ignore[assignment]
        self.clock = clock
        self.target = target
        self.format = _format_json if fmt == "json" else _format_text
        self.max_queue = max_queue
        self.flush_s = flush_s
        self.pending: list[dict[str, Any]] = []
        self.queue: queue.Queue[list[dict[str, Any]] | str | None] = queue.Queue()
        self.queued = 0  # events handed to the thread and not written yet
        self.dropped = 0
        #: Called with the number of records dropped (a metrics hook; from either thread).
        self.on_drop: Callable[[int], None] | None = None
        self._flush_call: Any = None
        self._thread: threading.Thread | None = None
        self._file: IO[str] | None = None

    def __call__(self, event: dict[str, Any]) -> None:
        if len(self.pending) + self.queued >= self.max_queue:
            self.dropped += 1
            if self.on_drop is not None:
                self.on_drop(1)
            return
        self.pending.append(event)
        if self._flush_call is None and self._thread is not None:
            self._flush_call = self.clock.callLater(self.flush_s, self.flush)

    def flush(self) -> None:
        """Hand the collected events to the writer thread."""
        self._flush_call = None
        batch, self.pending = self.pending, []
        if batch:
            self.queued += len(batch)
            self.queue.put(batch)

    def start(self) -> None:
        """Open the target and start the writer thread."""
        if self._thread is not None:
            return
        self._file = self._open()
        self._thread = threading.Thread(target=self._run, name="avx-access-log", daemon=True)
        self._thread.start()
        if self.pending:
            self._flush_call = self.clock.callLater(self.flush_s, self.flush)

    def reopen(self) -> None:
        """Reopen a file target by its path, between two batches (``kill -USR1`` after logrotate
        moved the file: lines go on in the moved file until then, none is lost)."""
        if self._thread is None or self.target == "-":
            return
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self.flush()
        self.queue.put(_REOPEN)

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is collected, then stop the thread and close a file target."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self.flush()
        self.queue.put(None)
        thread.join(timeout)
        if self._file is not None:
            _close_quietly(self._file)
        self._file = None

    def _run(self) -> None:
        out = self._file
        assert out is not None
        while True:
            batch = self.queue.get()
            if batch is None:
                try:
                    out.flush()
                except (OSError, ValueError):
                    pass  # those lines were counted as dropped when their write failed
                return
            if batch is _REOPEN:
                # Kept where it was when the path cannot be opened: better than losing lines.
                out = self._file = self._fresh(out)
                continue
            lines = [self.format(event) for event in batch]
            try:
                out.write("\n".join(lines) + "\n")
                out.flush()
            except (OSError, ValueError):
                self.dropped += len(lines)
                if self.on_drop is not None:
                    self.on_drop(len(lines))
                out = self._file = self._fresh(out)
            self.queued -= len(batch)

    def _open(self) -> Any:
        if self.target == "-":
            # The process's real stdout: twistd points sys.stdout at its own log, which would
            # wrap every line in a log prefix (and is not ours to call from a thread).
            return os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
        return open(self.target, "a", encoding="utf-8", buffering=1)  # noqa: SIM115

    def _fresh(self, old: Any) -> Any:
        """The same target opened again, the old file closed: on a reopen (logrotate), and
        after a failed write, so the lines counted as dropped do not sit in the old file's
        buffer to come out later. ``old`` is kept when the target cannot be opened."""
        try:
            fresh = self._open()
        except OSError:
            return old
        _close_quietly(old)
        return fresh


def _close_quietly(out: Any) -> None:
    """Close a log file whose last bytes may not be writable (a full disk, a closed pipe)."""
    try:
        out.close()
    except (OSError, ValueError):
        pass


def access_logger(writer: ILogObserver) -> Logger:
    """The Logger whose events are the access log (and nothing else sees them)."""
    return Logger(namespace="avx_twisted.access", observer=writer)


def apply_level(publisher: LogPublisher, level: str) -> bool:
    """Filter the observers already on ``publisher`` to events at ``level`` and above.

    twistd installs its observer before the service starts; wrapping what is there is how
    ``logging.level`` reaches it. Returns False when the publisher cannot be adjusted.
    """
    observers: Iterable[Any] | None = getattr(publisher, "_observers", None)
    if observers is None:
        return False
    predicate = LogLevelFilterPredicate(defaultLogLevel=LEVELS[level])
    wrapped = []
    for observer in list(observers):
        if isinstance(observer, FilteringLogObserver):
            wrapped.append(observer)
            continue
        publisher.removeObserver(observer)
        wrapped.append(FilteringLogObserver(observer, [predicate]))
    for observer in wrapped:
        if observer not in list(getattr(publisher, "_observers", [])):
            publisher.addObserver(observer)
    return True
