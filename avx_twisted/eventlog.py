"""The event log: what the gateway says about itself (start-up, reloads, errors), through
``twisted.logger``, as text or JSON lines.

stdout belongs to the access log; events go to stderr, or to twistd's ``--logfile`` (a
:class:`twisted.python.logfile.LogFile`, which :meth:`EventLog.reopen` reopens after logrotate
moved it: ``kill -USR1``). ``twistd avx-gateway`` installs one as twistd's log observer (see
:func:`twistd_observer_factory`); worker processes install their own.
"""

from __future__ import annotations

import json
import sys
import time
from typing import IO, Any, Callable

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    LogLevelFilterPredicate,
    formatEvent,
    formatEventAsClassicLogText,
)
from twisted.python.logfile import LogFile
from zope.interface import implementer

from .logs import LEVELS

#: The event log this process writes to (set by :func:`twistd_observer_factory` and the workers),
#: so that SIGUSR1 can reopen it.
_installed: list[EventLog] = []

_PLAIN = (str, int, float, bool, type(None))


def json_line(event: dict[str, Any], extra: dict[str, Any] | None = None) -> str:
    """One event as one JSON object: ``time`` (RFC 3339, UTC), ``level``, ``namespace``,
    ``message`` (formatted), the event's own plain fields, and ``error``/``traceback`` when it
    carries a failure."""
    when = event.get("log_time") or time.time()
    record: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when))
        + f".{int((when % 1) * 1000):03d}Z",
        "level": getattr(event.get("log_level"), "name", "info"),
        "namespace": event.get("log_namespace"),
        "message": formatEvent(event),
    }
    if extra:
        record.update(extra)
    for key, value in event.items():
        if not key.startswith("log_") and key not in record and isinstance(value, _PLAIN):
            record[key] = value
    failure = event.get("log_failure")
    if failure is not None:
        record["error"] = f"{failure.type.__name__}: {failure.getErrorMessage()}"
        record["traceback"] = failure.getTraceback()
    return json.dumps(record, default=str) + "\n"


def text_line(event: dict[str, Any], prefix: str = "") -> str | None:
    """twistd's classic text line (``time [namespace#level] message``), with ``prefix``."""
    line = formatEventAsClassicLogText(event)
    if line is None or not prefix:
        return line
    stamp, sep, rest = line.partition(" [")
    return f"{stamp} {prefix}{sep.strip()}{rest}" if sep else prefix + line


@implementer(ILogObserver)
class EventLog:
    """Writes events at ``level`` and above to ``target``: "stderr", "stdout" or a file path.

    ``fmt`` is "text" or "json"; ``worker`` labels the lines of a worker process.
    """

    def __init__(
        self,
        target: str = "stderr",
        fmt: str = "text",
        level: str = "info",
        worker: int | None = None,
        stream: IO[str] | None = None,
    ) -> None:
        self.target = target
        self.file: Any
        if target in ("stderr", "stdout"):
            # The real stream, taken now: twistd redirects sys.stdout/sys.stderr into the log
            # right after making its observer.
            self.file = stream or (sys.stderr if target == "stderr" else sys.stdout)
        else:
            self.file = LogFile.fromFullPath(target, rotateLength=None)  # rotation: logrotate
        formatter: Callable[[dict[str, Any]], str | None]
        if fmt == "json":
            extra = {"worker": worker} if worker is not None else None
            formatter = lambda event: json_line(event, extra)  # noqa: E731
        else:
            prefix = f"[worker {worker}] " if worker is not None else ""
            formatter = lambda event: text_line(event, prefix)  # noqa: E731
        self._observer = FilteringLogObserver(
            FileLogObserver(self.file, formatter),
            [LogLevelFilterPredicate(defaultLogLevel=LEVELS[level])],
        )

    def __call__(self, event: dict[str, Any]) -> None:
        self._observer(event)

    def reopen(self) -> None:
        """Reopen a file target by its path (after logrotate moved it); streams stay."""
        if isinstance(self.file, LogFile):
            self.file.reopen()

    def install(self) -> EventLog:
        """Make this the log :func:`reopen_event_log` reopens."""
        _installed[:] = [self]
        return self


def reopen_event_log() -> bool:
    """Reopen this process's event log file, if it writes to one; True if it did."""
    if not _installed or not isinstance(_installed[0].file, LogFile):
        return False
    _installed[0].reopen()
    return True


def twistd_target(logfile: str | None, nodaemon: bool) -> str:
    """Where twistd's ``--logfile``/``-n`` send the event log: twistd's own rules, except that
    with ``-n`` and no ``--logfile`` events go to stderr (stdout carries the access log)."""
    if logfile == "-":
        return "stdout"
    if not logfile:
        return "stderr" if nodaemon else "twistd.log"
    return logfile


#: What :func:`twistd_observer` makes: (target, format, level), set by :func:`use_for_twistd`.
_twistd_settings: list[tuple[str, str, str]] = []


def use_for_twistd(target: str, fmt: str, level: str) -> str:
    """Choose the event log twistd will install; returns the value for twistd's ``logger``
    option (a dotted name: twistd resolves it after the plugin's options are parsed)."""
    _twistd_settings[:] = [(target, fmt, level)]
    return f"{__name__}.twistd_observer"


def _settings_clear() -> None:
    _twistd_settings.clear()
    _installed.clear()


def twistd_observer() -> EventLog:
    """twistd's log observer factory: called once, before twistd redirects standard I/O; every
    event from then on (twistd's own start-up lines included) goes to the result."""
    target, fmt, level = _twistd_settings[0] if _twistd_settings else ("stderr", "text", "info")
    return EventLog(target, fmt, level).install()
