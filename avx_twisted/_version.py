"""The gateway's version (re-exported as ``avx_twisted.__version__``)."""

from __future__ import annotations

__version__ = "0.1.0"
