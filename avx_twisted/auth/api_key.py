"""API keys: a shared secret in a request header (or, if configured, a query parameter).

Keys are configured only as SHA-256 digests, so the configuration never holds a usable key. A
presented key is hashed and compared, in constant time, with every configured digest; which key
matched (if any) does not change how long the check takes.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import unquote_to_bytes

from ..config import ApiKeyConfig
from ..h1 import Fields
from ._identity import NO_CLAIMS, AuthError, Identity

__all__ = ["ApiKeyAuthenticator"]

_NO_SCOPES: frozenset[str] = frozenset()


class ApiKeyAuthenticator:
    """Checks the API key of a request against the configured ``[auth.api_key]`` keys."""

    def __init__(self, config: ApiKeyConfig) -> None:
        self.config = config
        #: Lowercased name of the credential header; the gateway strips it before forwarding.
        self.credential_header: bytes = config.header.lower().encode("ascii")
        self._query_param: bytes = config.query_param.encode("utf-8")
        self._digests: tuple[tuple[bytes, str], ...] = tuple(
            (bytes.fromhex(key.sha256), key.name) for key in config.keys
        )
        self._challenge = f'ApiKey header="{config.header}"'

    def authenticate(self, headers: Fields, query: bytes) -> Identity:
        """The identity of the key in ``headers`` (or the raw ``query``, without ``?``).

        The header wins over the query parameter. Raises :class:`AuthError` 401 ``missing``
        when no key was presented, ``malformed`` when several different keys were, and
        ``unknown_key`` when the key is not configured.
        """
        presented = self._single(headers.get_all(self.credential_header), "header")
        if presented is None and self._query_param:
            presented = self._single(self._query_values(query), "query parameter")
        if presented is None:
            raise self._error("missing", "no API key presented")
        digest = hashlib.sha256(presented).digest()
        matched: str | None = None
        for expected, name in self._digests:
            # Every digest is compared, whatever matched before: no early exit.
            if hmac.compare_digest(digest, expected):
                matched = name
        if matched is None:
            raise self._error("unknown_key", "unknown API key")
        return Identity(method="api_key", name=matched, claims=NO_CLAIMS, scopes=_NO_SCOPES)

    def strip_query(self, query: bytes) -> bytes:
        """``query`` without any occurrence of the key parameter, the rest kept byte-for-byte."""
        if not self._query_param or not query:
            return query
        parts = query.split(b"&")
        kept = [part for part in parts if not self._is_key_param(part)]
        if len(kept) == len(parts):
            return query
        return b"&".join(kept)

    def _single(self, values: list[bytes] | None, where: str) -> bytes | None:
        """The one non-empty key among ``values``; None if there is none."""
        if not values:
            return None
        found = {v.strip() for v in values}
        found.discard(b"")
        if not found:
            return None
        if len(found) > 1:
            raise self._error("malformed", f"more than one API key in the {where}")
        return found.pop()

    def _query_values(self, query: bytes) -> list[bytes]:
        """The percent-decoded values of every key parameter in ``query``."""
        values = []
        for part in query.split(b"&"):
            if self._is_key_param(part):
                _, _, value = part.partition(b"=")
                values.append(unquote_to_bytes(value.replace(b"+", b" ")))
        return values

    def _is_key_param(self, part: bytes) -> bool:
        """Whether the ``name[=value]`` query ``part`` is the key parameter (name decoded)."""
        name = part.partition(b"=")[0]
        if name == self._query_param:
            return True
        if b"%" in name or b"+" in name:
            return unquote_to_bytes(name.replace(b"+", b" ")) == self._query_param
        return False

    def _error(self, reason: str, description: str) -> AuthError:
        return AuthError(401, reason, description, www_authenticate=self._challenge)
