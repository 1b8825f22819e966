"""Example plugins for avx-gateway (plugin API version 1).

``tenant-header``
    Sets a request header (sent upstream) from a verified JWT claim, else from a configured
    default; a client's own copy of the header never reaches the upstream.
``deny-header``
    Answers 403 (the gateway's JSON error) to requests carrying a given header.

The gateway finds them through the ``avx_gateway.plugins`` entry points of this distribution
(see ``pyproject.toml``); nothing here is imported until a config names one of them.
"""

from __future__ import annotations

from .deny_header import DenyHeader
from .tenant_header import TenantHeader

__all__ = ["DenyHeader", "TenantHeader"]
__version__ = "0.1.0"
