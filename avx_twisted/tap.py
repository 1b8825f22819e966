"""``twistd avx-gateway``: command-line options and the service maker."""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.python import usage

from . import checks
from ._version import __version__
from .config import ConfigError, GatewayConfig
from .eventlog import twistd_target, use_for_twistd

DEMO_UPSTREAM = "tcp:9001:interface=127.0.0.1"
#: Exit status of a configuration that cannot work (nginx and Envoy use 1; 2 keeps "invalid
#: configuration" apart from "could not start" for scripts).
EXIT_CONFIG = 2
EXIT_START = 1


def version_text() -> str:
    """``avx-gateway 0.1.0 (Twisted 24.x, CPython 3.11.7)``."""
    import twisted

    return (
        f"avx-gateway {__version__} (Twisted {twisted.__version__}, "
        f"{platform.python_implementation()} {platform.python_version()})\n"
    )


def fail(message: str, status: int) -> None:
    """One line (or the config's error list) on the real stderr, then exit ``status``."""
    stream = sys.__stderr__ or sys.stderr
    stream.write(f"avx-gateway: {message}\n")
    stream.flush()
    raise SystemExit(status)


def load_checked(path: str, build: bool) -> GatewayConfig:
    """The config at ``path`` with every start-up check passed (``build``: the whole gateway is
    built once too, as ``--check`` and worker processes need), or exit with every problem."""
    try:
        config = GatewayConfig.load(path)
    except ConfigError as e:
        fail(f"invalid configuration\n{e}", EXIT_CONFIG)
    problems = checks.machine_problems(config)
    if build and not problems:
        problems = checks.build_problems(config)
    if problems:
        fail(f"invalid configuration\n{ConfigError(problems, source=path)}", EXIT_CONFIG)
    return config


def ok_line(path: str, config: GatewayConfig) -> str:
    """What ``--check`` prints for a config that passed."""
    endpoints = ", ".join(e for _, e in checks.listeners(config))
    return f"{path}: OK ({len(config.routes)} routes, listening on {endpoints})\n"


class Options(usage.Options):
    """Options of ``twistd avx-gateway``; the config is loaded and checked here, before any
    port is opened, so a bad config exits non-zero with every problem listed."""

    optParameters = [
        ["config", "c", "config/gateway.toml", "Path of the TOML configuration file."],
    ]
    optFlags = [
        ["check", None, "Run every start-up check on the configuration, print the result, exit."],
        ["demo", None, "Also run the built-in echo upstream on " + DEMO_UPSTREAM + "."],
    ]

    def opt_version(self) -> None:
        """Print the gateway's version and exit."""
        sys.stdout.write(version_text())
        sys.exit(0)

    def postOptions(self) -> None:
        config = load_checked(self["config"], build=self["check"])
        if self["check"]:
            sys.stdout.write(ok_line(self["config"], config))
            sys.exit(0)
        self["gateway_config"] = config
        self._take_over_event_log(config)

    def _take_over_event_log(self, config: GatewayConfig) -> None:
        """Give twistd our event log observer (stderr or ``--logfile``, text or JSON, reopened
        by SIGUSR1) unless the command line chose a logger or syslog itself."""
        parent = getattr(self, "parent", None)
        self["event_log"] = "stderr"
        if parent is None or parent.get("logger") or parent.get("syslog"):
            return
        target = twistd_target(parent.get("logfile"), bool(parent.get("nodaemon")))
        self["event_log"] = target
        self["pidfile"] = parent.get("pidfile") or None
        logging = config.logging
        parent["logger"] = use_for_twistd(target, logging.event_format, logging.level)


class GatewayProcess(MultiService):
    """The root service of ``twistd avx-gateway``: a listener that cannot be opened (port in
    use, permission denied) ends start-up with one line and exit status 1, no traceback."""

    def __init__(self, event_log: str = "stderr", pidfile: str | None = None) -> None:
        super().__init__()
        self.event_log = event_log
        self.pidfile = pidfile

    def privilegedStartService(self) -> None:
        from twisted.internet.error import CannotListenError

        from .service import ListenError

        try:
            super().privilegedStartService()
        except CannotListenError as e:  # the demo upstream's (the gateway's are ListenErrors)
            why = getattr(e.socketError, "strerror", None) or str(e.socketError)
            self._failed(f"--demo upstream: cannot listen on {DEMO_UPSTREAM}: {why}", False)
        except ListenError as e:
            self._failed(str(e), logged=True)

    def _failed(self, message: str, logged: bool) -> None:
        """Exit 1 with one line; the pid file twistd wrote goes too."""
        if self.pidfile:
            try:
                os.remove(self.pidfile)
            except OSError:
                pass
        if logged and self.event_log == "stderr":
            # The event log said it already, on stderr, in its own format.
            raise SystemExit(EXIT_START) from None
        fail(message, EXIT_START)


def makeService(options: dict[str, Any]) -> IService:
    """Build the gateway service (and the demo upstream with ``--demo``); nothing binds yet."""
    from .service import GatewayService

    config: GatewayConfig = options["gateway_config"]
    root = GatewayProcess(options.get("event_log", "stderr"), options.get("pidfile"))
    gateway: IService
    try:
        if config.server.workers > 1:
            from .workers import WorkerSupervisor

            # The workers build the gateway; build it once here so that a problem is reported
            # now, once, and not by every worker restarted in a loop.
            problems = checks.build_problems(config)
            if problems:
                raise ConfigError(problems, source=config.source)
            gateway = WorkerSupervisor(config, options["config"], event_log=root.event_log)
        else:
            gateway = GatewayService(config)
    except ConfigError as e:
        # Raised while building (a file that cannot be used): name the config file.
        fail(f"invalid configuration\n{ConfigError(e.errors, source=config.source)}", EXIT_CONFIG)
    if options.get("demo"):
        from .demo import echo_service

        echo_service(DEMO_UPSTREAM).setServiceParent(root)
    gateway.setServiceParent(root)
    return root
