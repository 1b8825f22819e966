"""``server.workers = N``: N reactor processes serving the same listening sockets.

The twistd process becomes a supervisor: it binds every listener once (so a bind error still
stops start-up with a non-zero exit), starts N worker processes that inherit the sockets and
adopt them (``adoptStreamPort``), restarts a worker that dies, and on SIGTERM closes its own
copies of the sockets and has every worker drain before it exits. SIGHUP and SIGUSR1 are passed
on to the workers (SIGUSR1 also reopens the supervisor's own event log file). ``/metrics`` on
any worker reports the sum over all of them: the workers share a ``prometheus_client``
multiprocess directory that the supervisor owns. Every worker writes its own event log lines
(labelled with its index) to the supervisor's event log target.

A worker is ``python -m avx_twisted.workers --config FILE --fd FD:FAMILY[:tls] ...``, one
``--fd`` per listener of :func:`avx_twisted.service.listener_plan`, in that order.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import sys
import tempfile
from dataclasses import dataclass
from typing import Any, Sequence

from twisted.application.service import Service
from twisted.internet import protocol
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.logger import Logger

from .config import GatewayConfig

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_FAMILIES = {"inet": socket.AF_INET, "inet6": socket.AF_INET6}


@dataclass(frozen=True)
class Listener:
    """One listening socket bound by the supervisor, and what the workers must wrap it in."""

    sock: socket.socket
    family: str  # "inet" | "inet6"
    description: str  # the endpoint string it came from
    tls: bool = False


def bind_listeners(endpoints: Sequence[str]) -> list[Listener]:
    """Bind every endpoint string once (tcp, tcp6 and ssl kinds), inheritable by children.
    Raises OSError (port in use...) after closing what it bound."""
    listeners: list[Listener] = []
    try:
        for description in endpoints:
            listeners.append(_bind_one(description))
    except BaseException:
        for listener in listeners:
            listener.sock.close()
        raise
    return listeners


def _bind_one(description: str) -> Listener:
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.testing import MemoryReactor

    endpoint = serverFromString(MemoryReactor(), description)
    port = getattr(endpoint, "_port", None)
    if port is None:
        raise ValueError(
            f"server.listen: {description!r} cannot be shared by worker processes "
            "(only tcp:, tcp6: and ssl: endpoints can)"
        )
    interface = getattr(endpoint, "_interface", "") or ""
    family = "inet6" if ":" in interface or type(endpoint).__name__.startswith("TCP6") else "inet"
    sock = socket.socket(_FAMILIES[family], socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((interface, port))
        sock.listen(getattr(endpoint, "_backlog", 128) or 128)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    os.set_inheritable(sock.fileno(), True)
    tls = hasattr(endpoint, "_sslContextFactory")
    return Listener(sock, family, description, tls)


class _WorkerProtocol(protocol.ProcessProtocol):
    """Relays a worker's stderr (its gateway log) into the supervisor's log; reports its end."""

    def __init__(self, supervisor: WorkerSupervisor, index: int, ready_fd: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.ready_fd = ready_fd
        self.ready = False
        self.ended: Deferred[None] = Deferred()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == self.ready_fd:
            if not self.ready and b"ready" in data:
                self.ready = True
                self.supervisor.worker_ready(self)
            return
        super().childDataReceived(childFD, data)

    def processEnded(self, reason: Any) -> None:
        self.supervisor.worker_ended(self, reason)
        self.ended.callback(None)


class WorkerSupervisor(Service):
    """Binds the listeners, runs ``config.server.workers`` workers, restarts dead ones."""

    log = Logger()
    restart_delay_s = 1.0

    def __init__(
        self,
        config: GatewayConfig,
        config_path: str,
        reactor: Any = None,
        event_log: str = "stderr",
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        self.config = config
        self.config_path = os.path.abspath(config_path)
        self.count = config.server.workers
        self.listeners: list[Listener] = []
        self.workers: dict[int, tuple[Any, _WorkerProtocol]] = {}
        self.stopping = False
        self.metrics_dir: str | None = None
        #: Where workers write their event log lines: the supervisor's own target.
        self.event_log = event_log
        self._previous_signals: dict[int, Any] = {}

    @property
    def ports(self) -> list[int]:
        """The bound port numbers (handy with port 0)."""
        return [listener.sock.getsockname()[1] for listener in self.listeners]

    def privilegedStartService(self) -> None:
        """Bind every listener (before twistd drops privileges); raises ListenError in one
        line when one cannot be bound."""
        super().privilegedStartService()
        self._bind()

    def _bind(self) -> None:
        from .service import ListenError, listener_plan

        if self.listeners:
            return
        plan = listener_plan(self.config)
        try:
            self.listeners = bind_listeners([description for _, description in plan])
        except OSError as e:
            # Which one failed: the first that does not bind alone (the others are closed).
            key, description = _failed_listener(self.config, plan)
            why = e.strerror or str(e)
            self.log.critical(
                "cannot listen on {endpoint} ({key}): {why}", endpoint=description, key=key, why=why
            )
            raise ListenError(f"{key}: cannot listen on {description}: {why}") from None

    def startService(self) -> None:
        super().startService()
        self._bind()
        if self.config.middleware.enable_metrics:
            self.metrics_dir = tempfile.mkdtemp(prefix="avx-gateway-metrics-")
        for listener in self.listeners:
            self.log.info(
                "avx-gateway supervisor listening on {endpoint} (port {port}) for {n} workers",
                endpoint=listener.description,
                port=listener.sock.getsockname()[1],
                n=self.count,
            )
        for index in range(self.count):
            self.spawn(index)
        self._previous_signals = {
            signal.SIGHUP: signal.signal(
                signal.SIGHUP,
                lambda *_: self.reactor.callFromThread(self.signal_workers, signal.SIGHUP, True),
            ),
            signal.SIGUSR1: signal.signal(
                signal.SIGUSR1, lambda *_: self.reactor.callFromThread(self.reopen_logs)
            ),
        }

    def reopen_logs(self) -> None:
        """SIGUSR1: reopen our event log file, and have every worker reopen its log files."""
        from .eventlog import reopen_event_log

        reopen_event_log()
        self.signal_workers(signal.SIGUSR1, ready_only=True)
        self.log.info("log files reopened (SIGUSR1), workers told")

    def spawn(self, index: int) -> None:
        """Start worker ``index`` with the listening sockets as fds 3, 4, ..."""
        args = [sys.executable, "-m", "avx_twisted.workers", "--config", self.config_path]
        args += ["--event-log", self.event_log]
        # stdout is the access log's, stderr the event log's: both the supervisor's own.
        child_fds: dict[int, Any] = {0: "w", 1: 1, 2: 2}
        for offset, listener in enumerate(self.listeners):
            fd = 3 + offset
            child_fds[fd] = listener.sock.fileno()
            args += ["--fd", f"{fd}:{listener.family}{':tls' if listener.tls else ''}"]
        ready_fd = 3 + len(self.listeners)
        child_fds[ready_fd] = "r"
        args += ["--ready-fd", str(ready_fd)]
        env = dict(os.environ)
        env["AVX_WORKER_INDEX"] = str(index)
        if self.metrics_dir is not None:
            env[MULTIPROC_ENV] = self.metrics_dir
        proto = _WorkerProtocol(self, index, ready_fd)
        process = self.reactor.spawnProcess(
            proto, sys.executable, args, env=env, childFDs=child_fds
        )
        self.workers[index] = (process, proto)
        self.log.info("worker {worker} started (pid {pid})", worker=index, pid=process.pid)

    def worker_ready(self, proto: _WorkerProtocol) -> None:
        """A worker serves (its signal handlers are in place)."""
        ready = sum(1 for _, p in self.workers.values() if p.ready)
        self.log.info(
            "worker {worker} ready ({ready} of {n})", worker=proto.index, ready=ready, n=self.count
        )

    def worker_ended(self, proto: _WorkerProtocol, reason: Any) -> None:
        process, _ = self.workers.pop(proto.index, (None, None))
        pid = getattr(process, "pid", None)
        if self.metrics_dir is not None and pid is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid, self.metrics_dir)
        if self.stopping:
            self.log.info("worker {worker} exited", worker=proto.index)
            return
        self.log.warn(
            "worker {worker} died ({why}); restarting in {delay} s",
            worker=proto.index,
            why=reason.getErrorMessage(),
            delay=self.restart_delay_s,
        )
        self.reactor.callLater(self.restart_delay_s, self._respawn, proto.index)

    def _respawn(self, index: int) -> None:
        if not self.stopping and index not in self.workers:
            self.spawn(index)

    def signal_workers(self, signum: int, ready_only: bool = False) -> None:
        """Send ``signum`` to every worker (or only those that reported ready: a worker still
        starting has no handler yet and would die of a SIGHUP; it reads the config anyway)."""
        for process, proto in list(self.workers.values()):
            if ready_only and not proto.ready:
                continue
            try:
                process.signalProcess(signum)
            except Exception:  # already gone
                pass

    def stopService(self) -> Deferred[Any]:
        """Close our copies of the sockets at once, then let every worker drain and exit."""
        self.stopping = True
        super().stopService()
        for signum, previous in self._previous_signals.items():
            signal.signal(signum, previous)
        self._previous_signals = {}
        for listener in self.listeners:
            listener.sock.close()
        self.listeners = []
        self._exit_cleanly()
        ended = [proto.ended for _, proto in self.workers.values()]
        self.signal_workers(signal.SIGTERM)
        server = self.config.server
        grace = (server.shutdown_delay_ms + server.drain_timeout_ms) / 1000.0 + 5.0
        killer = self.reactor.callLater(grace, self.signal_workers, signal.SIGKILL)

        def done(_: object) -> None:
            if killer.active():
                killer.cancel()
            if self.metrics_dir is not None:
                shutil.rmtree(self.metrics_dir, ignore_errors=True)
            self._exit_cleanly()

        if not ended:
            done(None)
            return succeed(None)
        return DeferredList(ended).addCallback(done)

    def _exit_cleanly(self) -> None:
        from .service import exit_cleanly_after_signal

        exit_cleanly_after_signal(self.reactor)


def _failed_listener(config: GatewayConfig, plan: Sequence[tuple[str, str]]) -> tuple[str, str]:
    """The first listener of ``plan`` that cannot be bound now, as (key path, endpoint)."""
    for purpose, description in plan:
        try:
            listener = _bind_one(description)
        except OSError:
            return config.listener_key(purpose), description
        listener.sock.close()
    return config.listener_key(plan[0][0]), plan[0][1]


# -- the worker process ----------------------------------------------------------------------------


def _parse_fd(value: str) -> tuple[int, int, bool]:
    parts = value.split(":")
    return int(parts[0]), _FAMILIES[parts[1]], parts[2:] == ["tls"]


def main(argv: Sequence[str] | None = None) -> None:
    """Run one worker: adopt the inherited sockets, serve, drain on SIGTERM, exit 0."""
    parser = argparse.ArgumentParser(prog="avx_twisted.workers")
    parser.add_argument("--config", required=True)
    parser.add_argument("--fd", action="append", default=[], type=_parse_fd)
    parser.add_argument("--ready-fd", type=int, default=None)
    parser.add_argument("--event-log", default="stderr")
    args = parser.parse_args(argv)

    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner

    from .eventlog import EventLog
    from .service import GatewayService

    config = GatewayConfig.load(args.config)
    logging = config.logging
    index = int(os.environ.get("AVX_WORKER_INDEX", "0"))
    # The supervisor's stdout and stderr are ours too: the access log on "-" writes to stdout,
    # the event log to the supervisor's target, in its format, each line saying which worker.
    event_log = EventLog(args.event_log, logging.event_format, logging.level, worker=index)
    globalLogBeginner.beginLoggingTo([event_log.install()], redirectStandardIO=False)
    service = GatewayService(config, reactor, inherited=args.fd)
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)

    stopping = []

    def stop(*_: Any) -> None:
        if not stopping:  # a second SIGTERM during the drain changes nothing
            stopping.append(True)
            reactor.callFromThread(reactor.stop)  # type: ignore[attr-defined]

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(service.reload))
    signal.signal(signal.SIGUSR1, lambda *_: reactor.callFromThread(service.reopen_logs))
    if args.ready_fd is not None:
        os.write(args.ready_fd, b"ready\n")
        os.close(args.ready_fd)
    reactor.run(installSignalHandlers=False)  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
