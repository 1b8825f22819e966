"""Start-up checks: everything that could stop a valid-looking config from starting, run by both
``--check`` and start-up, so that a config ``--check`` accepts never fails to start for a config
reason. (A port another process holds is not a config reason: it is reported in one line when
binding.)

The parser already checks the shape of every value; this adds what needs the machine: names to
listen on resolve, log files can be written, and the whole gateway can be built (key files read,
certificates parsed, Redis URLs understood). These run before the reactor, so blocking is fine.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from typing import Any

from ._configparse import tcp_address
from .config import ConfigError, GatewayConfig


def listeners(config: GatewayConfig) -> list[tuple[str, str]]:
    """Every listener of ``config`` as (key path, endpoint string); a data-plane listener is
    named by its index in ``server.listen``, or ``server.host``."""
    listen = config.server.listen
    found = []
    for purpose, description in config.listeners():
        key = config.listener_key(purpose)
        if purpose == "data":
            key = f"server.listen[{len(found)}]" if listen else "server.host"
        found.append((key, description))
    return found


def machine_problems(config: GatewayConfig) -> list[str]:
    """What the parser cannot see: unresolvable listen addresses, unwritable log files."""
    problems = []
    for key, description in listeners(config):
        address = tcp_address(description)
        if address is None or not address[0]:
            continue
        host = address[0]
        try:
            ipaddress.ip_address(host)
            continue
        except ValueError:
            pass
        try:
            socket.getaddrinfo(host, address[1], type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except (socket.gaierror, UnicodeError) as e:
            why = getattr(e, "strerror", None) or str(e)
            problems.append(f"{key}: cannot listen on {host!r}: the name does not resolve ({why})")
    access_log = config.logging.access_log
    if config.middleware.enable_logging and access_log != "-":
        if os.path.exists(access_log):
            writable = os.access(access_log, os.W_OK)
        else:
            writable = os.access(os.path.dirname(access_log) or ".", os.W_OK)
        if not writable:
            problems.append(f"logging.access_log: {access_log!r} is not writable by this user")
    return problems


def build_problems(config: GatewayConfig) -> list[str]:
    """Build (and throw away) the whole gateway, as a worker process would at start: key files,
    certificates and the like are read here. Nothing binds or connects."""
    from twisted.internet.testing import MemoryReactorClock

    from .service import GatewayService

    try:
        service = GatewayService(config, MemoryReactorClock())
    except ConfigError as e:
        return list(e.errors)
    discard(service)
    return []


def discard(service: Any) -> None:
    """Let go of a gateway that was built but never started: its Redis client connects lazily
    on the global reactor (stop it before it tries), and tracing runs an export thread."""
    close = getattr(service.runtime.rate_store, "close", None)
    if close is not None:
        try:
            close()
        except Exception:  # noqa: S110 - nothing was connected; nothing to report
            pass
    if service.tracing is not None:  # its export thread started with it
        service.tracing.shutdown()


def check(config: GatewayConfig) -> list[str]:
    """Every start-up problem of a parsed config (empty: it starts, ports permitting)."""
    return machine_problems(config) + build_problems(config)
