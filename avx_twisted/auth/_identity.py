"""What every authenticator hands back: an :class:`Identity`, or an :class:`AuthError`.

These names are re-exported by :mod:`avx_twisted.auth`; they live here so that the authenticator
modules can use them without importing their own package.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

__all__ = ["Identity", "AuthError", "NO_CLAIMS"]

NO_CLAIMS: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True)
class Identity:
    """A caller whose credential was verified.

    ``name`` is what logs, metrics and rate limits know the caller by: the JWT ``sub`` (empty if
    the token has none) or the API key's configured name. ``claims`` are the verified JWT claims
    (read-only; empty for API keys) and ``scopes`` come from the ``scope``/``scp`` claims.
    """

    method: str
    name: str
    claims: Mapping[str, Any]
    scopes: frozenset[str]


class AuthError(Exception):
    """Why a credential was refused.

    ``status`` is 401 (no or bad credential) or 403 (good credential, not enough scope);
    ``reason`` is a short machine label for metrics (``missing``, ``malformed``, ``expired``,
    ``not_yet_valid``, ``bad_signature``, ``bad_issuer``, ``bad_audience``, ``unknown_kid``,
    ``bad_algorithm``, ``missing_claim``, ``unknown_key``, ``insufficient_scope``,
    ``no_certificate``, ``certificate_not_allowed``, ``certificate_binding``, ``inactive``,
    ``idp_unavailable``);
    ``description`` is short human text that is safe to send to the client (it never echoes the
    credential); ``www_authenticate`` is the ready challenge header value, or None.

    A 503 (``idp_unavailable``: the identity provider could not be asked) fails closed: the
    request is refused with ``Retry-After: retry_after_s``, never let through.
    """

    def __init__(
        self,
        status: int,
        reason: str,
        description: str,
        www_authenticate: str | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(status, reason, description)
        self.status = status
        self.reason = reason
        self.description = description
        self.www_authenticate = www_authenticate
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        return f"{self.status} {self.reason}: {self.description}"

    def __repr__(self) -> str:
        return f"AuthError({self.status!r}, {self.reason!r}, {self.description!r})"
