"""RFC 6750 bearer tokens, shared by the JWT and the introspection authenticators.

Reading the token from ``Authorization``, the ``WWW-Authenticate`` challenges, the scopes a set
of claims grants, the ``insufficient_scope`` refusal, and claims as forwarded header values.
Refusals never echo the token.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

from ._identity import AuthError

__all__ = [
    "CHALLENGE",
    "REALM",
    "ClaimHeaders",
    "bearer_token",
    "challenge",
    "check_scopes",
    "invalid_token",
    "scopes_of",
]

REALM = "avx-gateway"
#: The challenge of a request that presented no bearer token (RFC 6750 §3.1: no error code).
CHALLENGE = f'Bearer realm="{REALM}"'
# Control characters become spaces in forwarded claim headers (no header injection).
_CONTROL_TO_SPACE = bytes(b if 32 <= b != 127 else 32 for b in range(256))


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def challenge(error: str, description: str, scope: str | None = None) -> str:
    """A ``WWW-Authenticate: Bearer`` value with an RFC 6750 error code."""
    value = f"{CHALLENGE}, error={_quote(error)}, error_description={_quote(description)}"
    if scope is not None:
        value += f", scope={_quote(scope)}"
    return value


def invalid_token(reason: str, description: str) -> AuthError:
    """A 401 for a token that was presented but is not acceptable."""
    return AuthError(401, reason, description, challenge("invalid_token", description))


def bearer_token(authorization: bytes | None) -> bytes:
    """The token of an ``Authorization: Bearer <token>`` value, or :class:`AuthError`.

    No value (or another scheme) is 401 ``missing`` with the bare challenge; an empty token,
    one with inner whitespace or non-ASCII bytes is 401 ``malformed``.
    """
    parts = authorization.split(None, 1) if authorization else []
    if not parts or parts[0].lower() != b"bearer":
        raise AuthError(401, "missing", "no bearer token presented", CHALLENGE)
    token = parts[1].strip() if len(parts) == 2 else b""
    if not token or len(token.split()) != 1 or not token.isascii():
        raise invalid_token("malformed", "the bearer token is malformed")
    return token


def scopes_of(claims: Mapping[str, Any]) -> frozenset[str]:
    """Scopes from ``scope`` (space-separated) and ``scp`` (list or space-separated string)."""
    found: set[str] = set()
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            found.update(value.split())
        elif isinstance(value, list):
            found.update(s for s in value if isinstance(s, str) and s)
    return frozenset(found)


def check_scopes(granted: frozenset[str], required: Sequence[str]) -> None:
    """Raise 403 ``insufficient_scope`` naming the ``required`` scopes not ``granted``.

    The challenge's ``scope`` lists every scope the route requires (RFC 6750 §3).
    """
    missing = [s for s in dict.fromkeys(required) if s not in granted]
    if missing:
        description = "missing scope: " + " ".join(missing)
        raise AuthError(
            403,
            "insufficient_scope",
            description,
            challenge("insufficient_scope", description, scope=" ".join(required)),
        )


def _header_value(value: Any) -> bytes:
    """A claim as a header value: strings as they are, anything else as compact JSON."""
    if not isinstance(value, str):
        value = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return value.encode("utf-8").translate(_CONTROL_TO_SPACE)


class ClaimHeaders:
    """``forward_claims``: verified claims sent upstream as headers, built once."""

    __slots__ = ("_pairs", "stripped")

    def __init__(self, forward_claims: Sequence[tuple[str, str]]) -> None:
        self._pairs = tuple((claim, header.encode("ascii")) for claim, header in forward_claims)
        #: Lowercased header names the gateway removes from client requests.
        self.stripped: frozenset[bytes] = frozenset(header.lower() for _, header in self._pairs)

    def __call__(self, claims: Mapping[str, Any]) -> list[tuple[bytes, bytes]]:
        """``(header, value)`` for each configured claim present (and not null) in ``claims``."""
        return [
            (header, _header_value(claims[claim]))
            for claim, header in self._pairs
            if claims.get(claim) is not None
        ]
