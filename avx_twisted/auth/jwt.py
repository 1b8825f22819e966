"""Bearer JWTs: verify ``Authorization: Bearer <token>`` against ``[auth.jwt]``.

The accepted algorithms come from the configuration only, never from the token, and HMAC and
public-key algorithms are never mixed, so a token cannot pick how its signature is checked.
Keys are an HMAC secret, a public key file, or a JWKS document fetched with the injected agent
and refreshed on the injected clock (and, rate-limited, when a token names an unknown ``kid``).
Time claims are checked against the injected clock, so expiry is testable with ``task.Clock``.
"""

from __future__ import annotations

import json
import math
import os
from types import MappingProxyType
from typing import Any, Mapping, Sequence

import jwt
from jwt.exceptions import (
    DecodeError,
    InvalidAlgorithmError,
    InvalidAudienceError,
    InvalidIssuerError,
    InvalidKeyError,
    InvalidSignatureError,
    MissingRequiredClaimError,
    PyJWTError,
)
from treq import collect
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IAgent

from ..config import HMAC_ALGORITHMS, ConfigError, JwtConfig
from ._identity import AuthError, Identity

__all__ = ["JwtAuthenticator"]

REALM = "avx-gateway"
MAX_JWKS_BYTES = 1024 * 1024

_CHALLENGE = f'Bearer realm="{REALM}"'
# Control characters become spaces in forwarded claim headers (no header injection).
_CONTROL_TO_SPACE = bytes(b if 32 <= b != 127 else 32 for b in range(256))
# alg -> prepared key object (or HMAC secret bytes) usable with that algorithm.
_KeysByAlg = Mapping[str, Any]


class _JwksError(Exception):
    """The JWKS document could not be used."""


class _KeySet:
    """One JWKS snapshot, replaced as a whole on refresh: ``kid`` -> keys by algorithm."""

    __slots__ = ("by_kid", "only", "count")

    def __init__(
        self, by_kid: Mapping[str, _KeysByAlg], only: _KeysByAlg | None, count: int
    ) -> None:
        self.by_kid = by_kid
        # The keys of the one and only JWK, for tokens without ``kid``; None if there are several.
        self.only = only
        self.count = count


_EMPTY_KEYSET = _KeySet({}, None, 0)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _challenge(error: str, description: str, scope: str | None = None) -> str:
    value = f"{_CHALLENGE}, error={_quote(error)}, error_description={_quote(description)}"
    if scope is not None:
        value += f", scope={_quote(scope)}"
    return value


def _invalid(reason: str, description: str) -> AuthError:
    """A 401 for a token that was presented but is not acceptable."""
    return AuthError(401, reason, description, _challenge("invalid_token", description))


def _scopes(claims: Mapping[str, Any]) -> frozenset[str]:
    """Scopes from ``scope`` (space-separated) and ``scp`` (list or space-separated string)."""
    found: set[str] = set()
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            found.update(value.split())
        elif isinstance(value, list):
            found.update(s for s in value if isinstance(s, str) and s)
    return frozenset(found)


def _header_value(value: Any) -> bytes:
    """A claim as a header value: strings as they are, anything else as compact JSON."""
    if not isinstance(value, str):
        value = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return value.encode("utf-8").translate(_CONTROL_TO_SPACE)


def _public_half(key: Any) -> Any:
    """The public key of a private key object; anything else unchanged."""
    public_key = getattr(key, "public_key", None)
    return public_key() if callable(public_key) else key


class JwtAuthenticator:
    """Verifies bearer JWTs; built once per gateway from :class:`JwtConfig`.

    Call :meth:`start` when serving begins (it loads the JWKS, if configured, and keeps it
    fresh) and :meth:`stop` when it ends.
    """

    log = Logger()

    #: Least time between two refreshes triggered by tokens with an unknown ``kid``.
    unknown_kid_refresh_interval_s = 30.0

    def __init__(
        self,
        config: JwtConfig,
        clock: IReactorTime,
        agent: IAgent | None = None,
        *,
        refresh_s: float = 300.0,
        timeout_s: float = 10.0,
        metrics: Any = None,
    ) -> None:
        self.config = config
        #: ``metrics.GatewayMetrics`` (JWKS refreshes, IdP errors), or None.
        self.metrics = metrics
        self.refresh_s = refresh_s
        self.timeout_s = timeout_s
        self._clock = clock
        self._agent = agent
        self._algorithms = list(config.algorithms)
        self._algorithm_set = frozenset(config.algorithms)
        self._hmac = all(alg in HMAC_ALGORITHMS for alg in config.algorithms)
        if not config.algorithms or (
            not self._hmac and any(alg in HMAC_ALGORITHMS for alg in config.algorithms)
        ):
            raise ConfigError(["auth.jwt.algorithms: must be all HS* or all public-key"])
        if not self._hmac and config.public_key_file is None and config.jwks_url is None:
            raise ConfigError(["auth.jwt: public-key algorithms need public_key_file or jwks_url"])
        self._alg_objs = {alg: jwt.get_algorithm_by_name(alg) for alg in config.algorithms}
        self._leeway = config.leeway_s
        self._options: dict[str, Any] = {
            "require": ["exp"],
            "verify_exp": False,
            "verify_nbf": False,
            "verify_iat": False,
            "verify_iss": config.issuer is not None,
            "verify_aud": config.audience is not None,
        }
        self._secret_keys: dict[str, bytes] = {}
        self._file_keys: _KeysByAlg = {}
        if self._hmac:
            self._secret_keys = self._load_secret(config)
        elif config.public_key_file is not None:
            self._file_keys = self._load_key_file(config.public_key_file)
        # JWKS is for public keys only: symmetric keys are never fetched from a URL.
        self._jwks_url = config.jwks_url if not self._hmac else None
        self._jwks: _KeySet = _EMPTY_KEYSET
        self._http: HTTPClient | None = None
        self._loop: LoopingCall | None = None
        self._inflight: Deferred[None] | None = None
        self._last_unknown_kid_refresh: float | None = None
        self._stopped = False
        self._claim_headers = tuple(
            (claim, header.encode("ascii")) for claim, header in config.forward_claims
        )
        #: Lowercased header names the gateway removes from client requests (claim headers).
        self.stripped_headers: frozenset[bytes] = frozenset(
            header.lower() for _, header in self._claim_headers
        )

    # -- per request --------------------------------------------------------------------------

    def authenticate(self, authorization: bytes | None) -> Identity:
        """The identity of the bearer token in an ``Authorization`` value, or :class:`AuthError`.

        No ``Authorization`` (or another scheme) is 401 ``missing`` with a bare challenge; a bad
        token is 401 with ``error="invalid_token"`` and the reason as a metric label.
        """
        token = self._bearer_token(authorization)
        try:
            header = jwt.get_unverified_header(token)
        except PyJWTError:
            raise _invalid("malformed", "the token is not a well-formed JWT")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithm_set:
            raise _invalid("bad_algorithm", "the token's algorithm is not accepted")
        key = self._key_for(alg, header.get("kid"))
        claims = self._decode(token, key)
        self._check_times(claims)
        sub = claims.get("sub")
        return Identity(
            method="jwt",
            name=sub if isinstance(sub, str) else "",
            claims=MappingProxyType(claims),
            scopes=_scopes(claims),
        )

    def check_scopes(self, identity: Identity, required: Sequence[str]) -> None:
        """Raise 403 ``insufficient_scope`` naming the ``required`` scopes the token lacks."""
        missing = [s for s in dict.fromkeys(required) if s not in identity.scopes]
        if missing:
            description = "missing scope: " + " ".join(missing)
            raise AuthError(
                403,
                "insufficient_scope",
                description,
                _challenge("insufficient_scope", description, scope=" ".join(required)),
            )

    def claim_headers(self, identity: Identity) -> list[tuple[bytes, bytes]]:
        """``(header, value)`` for each configured ``forward_claims`` claim the token has."""
        claims = identity.claims
        return [
            (header, _header_value(claims[claim]))
            for claim, header in self._claim_headers
            if claims.get(claim) is not None
        ]

    def _bearer_token(self, authorization: bytes | None) -> bytes:
        parts = authorization.split(None, 1) if authorization else []
        if not parts or parts[0].lower() != b"bearer":
            raise AuthError(401, "missing", "no bearer token presented", _CHALLENGE)
        token = parts[1].strip() if len(parts) == 2 else b""
        if not token or len(token.split()) != 1 or not token.isascii():
            raise _invalid("malformed", "the bearer token is malformed")
        return token

    def _key_for(self, alg: str, kid: Any) -> Any:
        """The key to verify an ``alg`` token naming ``kid`` with, or :class:`AuthError`."""
        if self._hmac:
            return self._secret_keys[alg]
        keyset = self._jwks
        by_alg = keyset.by_kid.get(kid) if isinstance(kid, str) else keyset.only
        if by_alg is not None:
            key = by_alg.get(alg)
            if key is None:
                raise _invalid("bad_algorithm", "the signing key does not allow the algorithm")
            return key
        key = self._file_keys.get(alg)
        if key is not None:
            return key
        if self._jwks_url is None:
            raise _invalid("bad_algorithm", "no key is configured for the token's algorithm")
        if not isinstance(kid, str):
            raise _invalid("unknown_kid", "the token names no signing key (kid)")
        self._refresh_for_unknown_kid()
        raise _invalid("unknown_kid", "the token's signing key (kid) is unknown")

    def _decode(self, token: bytes, key: Any) -> dict[str, Any]:
        """Verify signature, ``exp`` presence, ``iss`` and ``aud``; the claims, or AuthError."""
        config = self.config
        try:
            return jwt.decode(
                token,
                key,
                algorithms=self._algorithms,
                options=self._options,  # type: ignore[arg-type]
                issuer=config.issuer,
                audience=config.audience,
                leeway=self._leeway,
            )
        except InvalidSignatureError:
            raise _invalid("bad_signature", "the token's signature is invalid")
        except MissingRequiredClaimError as e:
            if e.claim == "iss":
                raise _invalid("bad_issuer", "the token has no issuer")
            if e.claim == "aud":
                raise _invalid("bad_audience", "the token has no audience")
            raise _invalid("missing_claim", f"the token has no {e.claim} claim")
        except InvalidIssuerError:
            raise _invalid("bad_issuer", "the token's issuer is not accepted")
        except InvalidAudienceError:
            raise _invalid("bad_audience", "the token's audience is not accepted")
        except (InvalidAlgorithmError, InvalidKeyError):
            raise _invalid("bad_algorithm", "the token's algorithm is not accepted")
        except DecodeError:
            raise _invalid("malformed", "the token is not a well-formed JWT")
        except PyJWTError:
            raise _invalid("malformed", "the token's claims are invalid")
        except (TypeError, ValueError, KeyError):
            self.log.failure("unexpected error verifying a JWT")
            raise _invalid("malformed", "the token could not be verified")

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        """``exp``, ``nbf`` and ``iat`` against the injected clock, with the configured leeway."""
        now = self._clock.seconds()
        leeway = self._leeway
        exp = self._time_claim(claims, "exp")
        if exp is not None and now >= exp + leeway:
            raise _invalid("expired", "the token has expired")
        nbf = self._time_claim(claims, "nbf")
        if nbf is not None and nbf > now + leeway:
            raise _invalid("not_yet_valid", "the token is not valid yet")
        iat = self._time_claim(claims, "iat")
        if iat is not None and iat > now + leeway:
            raise _invalid("not_yet_valid", "the token was issued in the future")

    @staticmethod
    def _time_claim(claims: Mapping[str, Any], name: str) -> float | None:
        value = claims.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _invalid("malformed", f"the token's {name} claim is not a number")
        if isinstance(value, float) and not math.isfinite(value):
            raise _invalid("malformed", f"the token's {name} claim is not a number")
        return value

    # -- keys -----------------------------------------------------------------------------------

    def _load_secret(self, config: JwtConfig) -> dict[str, bytes]:
        secret = config.secret
        if secret is None and config.secret_env is not None:
            secret = os.environ.get(config.secret_env)
            if not secret:
                raise ConfigError(
                    [f"auth.jwt.secret_env: environment variable {config.secret_env!r} is not set"]
                )
        if not secret:
            raise ConfigError(["auth.jwt.secret: HS* algorithms need a non-empty secret"])
        keys = {}
        for alg in config.algorithms:
            try:
                keys[alg] = self._alg_objs[alg].prepare_key(secret)
            except InvalidKeyError as e:
                raise ConfigError([f"auth.jwt.secret: not usable with {alg}: {e}"])
            weak = self._alg_objs[alg].check_key_length(keys[alg])
            if weak:
                self.log.warn("auth.jwt secret is weak for {alg}: {why}", alg=alg, why=weak)
        return keys

    def _load_key_file(self, path: str) -> _KeysByAlg:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ConfigError([f"auth.jwt.public_key_file: cannot read {path!r}: {e.strerror}"])
        key: Any = data
        if b"-----BEGIN CERTIFICATE-----" in data:
            from cryptography import x509

            try:
                key = x509.load_pem_x509_certificate(data).public_key()
            except ValueError as e:
                raise ConfigError([f"auth.jwt.public_key_file: bad certificate {path!r}: {e}"])
        keys = self._prepare(key, None)
        if not keys:
            raise ConfigError(
                [
                    f"auth.jwt.public_key_file: {path!r} holds no key usable with "
                    f"{', '.join(self._algorithms)}"
                ]
            )
        return keys

    def _prepare(self, key: Any, jwk_alg: Any) -> _KeysByAlg:
        """``key`` prepared for each configured algorithm it fits (only ``jwk_alg`` if set)."""
        prepared = {}
        for alg, alg_obj in self._alg_objs.items():
            if jwk_alg is not None and jwk_alg != alg:
                continue
            try:
                prepared[alg] = _public_half(alg_obj.prepare_key(key))
            except (PyJWTError, TypeError, ValueError):
                continue
        return prepared

    def _parse_jwks(self, data: Any) -> _KeySet:
        """The signing keys of a JWKS document usable with the configured algorithms."""
        raw_keys = data.get("keys") if isinstance(data, dict) else None
        if not isinstance(raw_keys, list):
            raise _JwksError("not a JWK set")
        by_kid: dict[str, dict[str, Any]] = {}
        usable = []
        for raw in raw_keys:
            if not isinstance(raw, dict) or raw.get("use", "sig") != "sig":
                continue
            try:
                # One PyJWK at a time (as PyJWKSet does) to see each key's own "alg".
                jwk = jwt.PyJWK(raw)
            except (PyJWTError, TypeError, ValueError):
                continue
            keys = self._prepare(jwk.key, raw.get("alg"))
            if not keys:
                continue
            usable.append(keys)
            if isinstance(jwk.key_id, str):
                merged = by_kid.setdefault(jwk.key_id, {})
                for alg, key in keys.items():
                    merged.setdefault(alg, key)
        if not usable:
            raise _JwksError("no signing keys usable with " + ", ".join(self._algorithms))
        return _KeySet(by_kid, usable[0] if len(usable) == 1 else None, len(usable))

    # -- JWKS refresh -------------------------------------------------------------------------

    def start(self) -> None:
        """With ``jwks_url``: fetch the JWKS now and every ``refresh_s`` seconds."""
        self._stopped = False
        if self._jwks_url is None or self._loop is not None:
            return
        self._loop = LoopingCall(self.refresh)
        self._loop.clock = self._clock
        self._loop.start(self.refresh_s, now=True).addErrback(
            lambda f: self.log.failure("JWKS refresh loop stopped", f)
        )

    def stop(self) -> None:
        """Stop refreshing and abandon a fetch in progress; leaves no timers behind."""
        self._stopped = True
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()
        if self._inflight is not None:
            self._inflight.cancel()

    def refresh(self) -> Deferred[None]:
        """Fetch the JWKS and replace the keys; fires None either way (failures are logged).

        While a fetch is in flight, another call waits for it instead of starting a second.
        """
        if self._jwks_url is None:
            return succeed(None)
        if self._inflight is None:
            d = Deferred.fromCoroutine(self._fetch_jwks())
            d.addTimeout(self.timeout_s, self._clock)
            d.addCallbacks(self._install, self._fetch_failed)
            if d.called:
                return d
            self._inflight = d
            d.addBoth(self._fetch_done)
        follower: Deferred[None] = Deferred()

        def release(result: Any) -> Any:
            follower.callback(None)
            return result

        self._inflight.addBoth(release)
        return follower

    def _refresh_for_unknown_kid(self) -> None:
        if self._stopped or self._inflight is not None:
            return
        now = self._clock.seconds()
        last = self._last_unknown_kid_refresh
        if last is not None and now - last < self.unknown_kid_refresh_interval_s:
            return
        self._last_unknown_kid_refresh = now
        self.log.info("token with an unknown kid: refreshing JWKS from {url}", url=self._jwks_url)
        self.refresh()

    async def _fetch_jwks(self) -> _KeySet:
        if self._http is None:
            self._http = self._make_client()
        response = await self._http.get(self._jwks_url, headers={b"Accept": [b"application/json"]})
        chunks: list[bytes] = []
        size = [0]

        def gather(data: bytes) -> None:
            size[0] += len(data)
            if size[0] > MAX_JWKS_BYTES:
                raise _JwksError(f"document larger than {MAX_JWKS_BYTES} bytes")
            chunks.append(data)

        await collect(response, gather)
        if response.code != 200:
            raise _JwksError(f"HTTP status {response.code}")
        try:
            data = json.loads(b"".join(chunks))
        except (ValueError, RecursionError) as e:
            raise _JwksError(f"not JSON: {e}")
        return self._parse_jwks(data)

    def _make_client(self) -> HTTPClient:
        agent = self._agent
        if agent is None:
            from twisted.internet import reactor
            from twisted.web.client import Agent

            agent = Agent(reactor)
        return HTTPClient(agent)

    def _install(self, keyset: _KeySet) -> None:
        old, self._jwks = self._jwks, keyset
        if set(old.by_kid) != set(keyset.by_kid) or old.count != keyset.count:
            self.log.info(
                "loaded {count} JWKS keys from {url}: key ids {kids}",
                count=keyset.count,
                url=self._jwks_url,
                kids=sorted(keyset.by_kid),
            )

    def _fetch_failed(self, failure: Failure) -> None:
        if self._stopped and failure.check(CancelledError):
            return
        self.log.warn(
            "JWKS refresh from {url} failed ({error_type}: {error}); keeping {count} known keys",
            url=self._jwks_url,
            error_type=failure.type.__name__,
            error=failure.getErrorMessage(),
            count=self._jwks.count,
        )

    def _fetch_done(self, result: Any) -> Any:
        self._inflight = None
        return result
