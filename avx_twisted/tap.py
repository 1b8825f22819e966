"""``twistd avx-gateway``: command-line options and the service maker."""

from __future__ import annotations

import sys
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.python import usage

from .config import ConfigError, GatewayConfig

DEMO_UPSTREAM = "tcp:9001:interface=127.0.0.1"


class Options(usage.Options):
    """Options of ``twistd avx-gateway``; the config is loaded and validated here, before any
    port is opened, so a bad config exits non-zero with every problem listed."""

    optParameters = [
        ["config", "c", "config/gateway.toml", "Path of the TOML configuration file."],
    ]
    optFlags = [
        ["check", None, "Validate the configuration, print the result and exit."],
        ["demo", None, "Also run the built-in echo upstream on " + DEMO_UPSTREAM + "."],
    ]

    def postOptions(self) -> None:
        try:
            self["gateway_config"] = GatewayConfig.load(self["config"])
        except ConfigError as e:
            # Straight to stderr and out, before any port opens: twistd's usage dump would bury it.
            sys.stderr.write(f"avx-gateway: invalid configuration\n{e}\n")
            sys.exit(2)
        if self["check"]:
            config: GatewayConfig = self["gateway_config"]
            sys.stdout.write(
                f"{self['config']}: OK ({len(config.routes)} routes, listening on "
                f"{', '.join(config.server.endpoints)})\n"
            )
            sys.exit(0)


def makeService(options: dict[str, Any]) -> IService:
    """Build the gateway service (and the demo upstream with ``--demo``); nothing binds yet."""
    from .service import GatewayService

    config: GatewayConfig = options["gateway_config"]
    gateway: IService
    try:
        if config.server.workers > 1:
            from .workers import WorkerSupervisor

            gateway = WorkerSupervisor(config, options["config"])
        else:
            gateway = GatewayService(config)
    except ConfigError as e:  # problems only found when building (e.g. an unreadable key file)
        sys.stderr.write(f"avx-gateway: invalid configuration\n{e}\n")
        sys.exit(2)
    if not options["demo"]:
        return gateway
    from .demo import echo_service

    root = MultiService()
    echo_service(DEMO_UPSTREAM).setServiceParent(root)
    gateway.setServiceParent(root)
    return root
