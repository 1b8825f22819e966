"""Bearer JWTs: verify ``Authorization: Bearer <token>`` against ``[auth.jwt]``.

The accepted algorithms come from the configuration only, never from the token, and HMAC and
public-key algorithms are never mixed, so a token cannot pick how its signature is checked.
Keys are an HMAC secret, a public key file, or a JWKS document fetched with the injected agent
from ``jwks_url`` or from the ``jwks_uri`` that OIDC discovery on ``oidc_issuer`` names, kept
fresh by :class:`._jwks.JwksSource` (on the answer's cache headers, and, rate-limited, when a
token names an unknown ``kid``). Time claims are checked against the injected clock, so expiry
is testable with ``task.Clock``.
"""

from __future__ import annotations

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
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IAgent

from ..config import HMAC_ALGORITHMS, ConfigError, JwtConfig
from ._bearer import REALM, ClaimHeaders, bearer_token, check_scopes, invalid_token, scopes_of
from ._identity import Identity
from ._idp import IdPError, url_problem
from ._jwks import EMPTY_KEYSET, MAX_JWKS_BYTES, JwksSource, KeysByAlg, KeySet

__all__ = ["JwtAuthenticator", "REALM", "MAX_JWKS_BYTES"]


def _public_half(key: Any) -> Any:
    """The public key of a private key object; anything else unchanged."""
    public_key = getattr(key, "public_key", None)
    return public_key() if callable(public_key) else key


class JwtAuthenticator:
    """Verifies bearer JWTs; built once per gateway from :class:`JwtConfig`.

    Call :meth:`start` when serving begins (it loads the JWKS, if configured, and keeps it
    fresh) and :meth:`stop` when it ends. With ``oidc_issuer`` and no ``issuer``, tokens must
    carry ``iss`` equal to ``oidc_issuer``: its keys vouch for its own tokens only.
    """

    log = Logger()

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
        self._algorithms = list(config.algorithms)
        self._algorithm_set = frozenset(config.algorithms)
        self._hmac = all(alg in HMAC_ALGORITHMS for alg in config.algorithms)
        if not config.algorithms or (
            not self._hmac and any(alg in HMAC_ALGORITHMS for alg in config.algorithms)
        ):
            raise ConfigError(["auth.jwt.algorithms: must be all HS* or all public-key"])
        if not self._hmac and not (config.public_key_file or config.jwks_url or config.oidc_issuer):
            raise ConfigError(
                ["auth.jwt: public-key algorithms need public_key_file, jwks_url or oidc_issuer"]
            )
        if config.oidc_issuer is not None and config.jwks_url is not None:
            raise ConfigError(["auth.jwt: give oidc_issuer or jwks_url, not both"])
        if config.oidc_issuer is not None and not self._hmac:
            problem = url_problem(config.oidc_issuer)
            if problem is not None:
                raise ConfigError([f"auth.jwt.oidc_issuer: {config.oidc_issuer!r} {problem}"])
        self._alg_objs = {alg: jwt.get_algorithm_by_name(alg) for alg in config.algorithms}
        self._leeway = config.leeway_s
        self._issuer = config.issuer if config.issuer is not None else config.oidc_issuer
        self._options: dict[str, Any] = {
            "require": ["exp"],
            "verify_exp": False,
            "verify_nbf": False,
            "verify_iat": False,
            "verify_iss": self._issuer is not None,
            "verify_aud": config.audience is not None,
        }
        self._secret_keys: dict[str, bytes] = {}
        self._file_keys: KeysByAlg = {}
        if self._hmac:
            self._secret_keys = self._load_secret(config)
        elif config.public_key_file is not None:
            self._file_keys = self._load_key_file(config.public_key_file)
        #: Where the JWKS comes from (None: no JWKS). Public keys only: symmetric keys are never
        #: fetched from a URL.
        self.jwks: JwksSource | None = None
        if not self._hmac and (config.jwks_url or config.oidc_issuer):
            self.jwks = JwksSource(
                clock,
                agent,
                self._parse_jwks,
                jwks_url=config.jwks_url,
                oidc_issuer=config.oidc_issuer,
                refresh_s=refresh_s,
                timeout_s=timeout_s,
                metrics=metrics,
            )
        self._claim_headers = ClaimHeaders(config.forward_claims)
        #: Lowercased header names the gateway removes from client requests (claim headers).
        self.stripped_headers: frozenset[bytes] = self._claim_headers.stripped

    # -- per request --------------------------------------------------------------------------

    def authenticate(self, authorization: bytes | None) -> Identity:
        """The identity of the bearer token in an ``Authorization`` value, or :class:`AuthError`.

        No ``Authorization`` (or another scheme) is 401 ``missing`` with a bare challenge; a bad
        token is 401 with ``error="invalid_token"`` and the reason as a metric label.
        """
        token = bearer_token(authorization)
        try:
            header = jwt.get_unverified_header(token)
        except PyJWTError:
            raise invalid_token("malformed", "the token is not a well-formed JWT")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithm_set:
            raise invalid_token("bad_algorithm", "the token's algorithm is not accepted")
        key = self._key_for(alg, header.get("kid"))
        claims = self._decode(token, key)
        self._check_times(claims)
        sub = claims.get("sub")
        return Identity(
            method="jwt",
            name=sub if isinstance(sub, str) else "",
            claims=MappingProxyType(claims),
            scopes=scopes_of(claims),
        )

    def check_scopes(self, identity: Identity, required: Sequence[str]) -> None:
        """Raise 403 ``insufficient_scope`` naming the ``required`` scopes the token lacks."""
        check_scopes(identity.scopes, required)

    def claim_headers(self, identity: Identity) -> list[tuple[bytes, bytes]]:
        """``(header, value)`` for each configured ``forward_claims`` claim the token has."""
        return self._claim_headers(identity.claims)

    def _key_for(self, alg: str, kid: Any) -> Any:
        """The key to verify an ``alg`` token naming ``kid`` with, or :class:`AuthError`."""
        if self._hmac:
            return self._secret_keys[alg]
        source = self.jwks
        keyset = source.keys if source is not None else EMPTY_KEYSET
        by_alg = keyset.by_kid.get(kid) if isinstance(kid, str) else keyset.only
        if by_alg is not None:
            key = by_alg.get(alg)
            if key is None:
                raise invalid_token("bad_algorithm", "the signing key does not allow the algorithm")
            return key
        key = self._file_keys.get(alg)
        if key is not None:
            return key
        if source is None:
            raise invalid_token("bad_algorithm", "no key is configured for the token's algorithm")
        if not isinstance(kid, str):
            raise invalid_token("unknown_kid", "the token names no signing key (kid)")
        source.refresh_for_unknown_kid()
        raise invalid_token("unknown_kid", "the token's signing key (kid) is unknown")

    def _decode(self, token: bytes, key: Any) -> dict[str, Any]:
        """Verify signature, ``exp`` presence, ``iss`` and ``aud``; the claims, or AuthError."""
        config = self.config
        try:
            return jwt.decode(
                token,
                key,
                algorithms=self._algorithms,
                options=self._options,  # type: ignore[arg-type]
                issuer=self._issuer,
                audience=config.audience,
                leeway=self._leeway,
            )
        except InvalidSignatureError:
            raise invalid_token("bad_signature", "the token's signature is invalid")
        except MissingRequiredClaimError as e:
            if e.claim == "iss":
                raise invalid_token("bad_issuer", "the token has no issuer")
            if e.claim == "aud":
                raise invalid_token("bad_audience", "the token has no audience")
            raise invalid_token("missing_claim", f"the token has no {e.claim} claim")
        except InvalidIssuerError:
            raise invalid_token("bad_issuer", "the token's issuer is not accepted")
        except InvalidAudienceError:
            raise invalid_token("bad_audience", "the token's audience is not accepted")
        except (InvalidAlgorithmError, InvalidKeyError):
            raise invalid_token("bad_algorithm", "the token's algorithm is not accepted")
        except DecodeError:
            raise invalid_token("malformed", "the token is not a well-formed JWT")
        except PyJWTError:
            raise invalid_token("malformed", "the token's claims are invalid")
        except (TypeError, ValueError, KeyError):
            self.log.failure("unexpected error verifying a JWT")
            raise invalid_token("malformed", "the token could not be verified")

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        """``exp``, ``nbf`` and ``iat`` against the injected clock, with the configured leeway."""
        now = self._clock.seconds()
        leeway = self._leeway
        exp = self._time_claim(claims, "exp")
        if exp is not None and now >= exp + leeway:
            raise invalid_token("expired", "the token has expired")
        nbf = self._time_claim(claims, "nbf")
        if nbf is not None and nbf > now + leeway:
            raise invalid_token("not_yet_valid", "the token is not valid yet")
        iat = self._time_claim(claims, "iat")
        if iat is not None and iat > now + leeway:
            raise invalid_token("not_yet_valid", "the token was issued in the future")

    @staticmethod
    def _time_claim(claims: Mapping[str, Any], name: str) -> float | None:
        value = claims.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise invalid_token("malformed", f"the token's {name} claim is not a number")
        if isinstance(value, float) and not math.isfinite(value):
            raise invalid_token("malformed", f"the token's {name} claim is not a number")
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

    def _load_key_file(self, path: str) -> KeysByAlg:
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

    def _prepare(self, key: Any, jwk_alg: Any) -> KeysByAlg:
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

    def _parse_jwks(self, data: Any) -> KeySet:
        """The signing keys of a JWKS document usable with the configured algorithms."""
        raw_keys = data.get("keys") if isinstance(data, dict) else None
        if not isinstance(raw_keys, list):
            raise IdPError("body", "not a JWK set")
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
            raise IdPError("body", "no signing keys usable with " + ", ".join(self._algorithms))
        return KeySet(by_kid, usable[0] if len(usable) == 1 else None, len(usable))

    # -- JWKS refresh -------------------------------------------------------------------------

    def start(self) -> None:
        """With a JWKS (``jwks_url`` or ``oidc_issuer``): fetch it now and keep it fresh."""
        if self.jwks is not None:
            self.jwks.start()

    def stop(self) -> None:
        """Stop refreshing and abandon a fetch in progress; leaves no timers behind."""
        if self.jwks is not None:
            self.jwks.stop()

    def refresh(self) -> Deferred[None]:
        """Fetch the JWKS now and replace the keys; fires None either way (failures are logged).

        While a fetch is in flight, another call waits for it instead of starting a second.
        """
        if self.jwks is None:
            return succeed(None)
        return self.jwks.refresh()
