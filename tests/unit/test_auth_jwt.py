"""Tests for avx_twisted.auth.jwt: bearer parsing, verification, scopes, claims, JWKS refresh
and OIDC discovery."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shutil
import tempfile
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from treq.testing import RequestTraversalAgent
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IAgent
from twisted.web.resource import Resource
from twisted.web.server import Request
from zope.interface import implementer

from avx_twisted.auth import AuthError, Identity
from avx_twisted.auth.jwt import JwtAuthenticator
from avx_twisted.config import ConfigError, JwtConfig
from avx_twisted.metrics import GatewayMetrics

NOW = 1_700_000_000
SECRET = "a-test-secret-that-is-long-enough-for-hs512-0123456789abcdefghijklmnop"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_KEY_2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
JWKS_URL = "https://idp.example/.well-known/jwks.json"


def public_pem(private_key: Any) -> bytes:
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def claims(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"sub": "alice", "exp": NOW + 60, "iat": NOW}
    base.update(extra)
    return {k: v for k, v in base.items() if v is not None}


def token(
    payload: dict[str, Any] | None = None,
    key: Any = SECRET,
    alg: str = "HS256",
    kid: str | None = None,
) -> bytes:
    headers = {"kid": kid} if kid is not None else None
    encoded = jwt.encode(
        claims() if payload is None else payload, key, algorithm=alg, headers=headers
    )
    return encoded.encode("ascii")


def handmade(header: dict[str, Any], payload: dict[str, Any], sign: Any = None) -> bytes:
    """A token built byte by byte, for what pyjwt refuses to produce."""
    signing_input = b64(json.dumps(header).encode()) + b"." + b64(json.dumps(payload).encode())
    signature = sign(signing_input) if sign is not None else b""
    return signing_input + b"." + b64(signature)


def bearer(raw: bytes) -> bytes:
    return b"Bearer " + raw


def rsa_jwk(private_key: Any, kid: str, **extra: Any) -> dict[str, Any]:
    jwk_dict = json.loads(RSAAlgorithm.to_jwk(private_key.public_key()))
    jwk_dict.update({"kid": kid, "use": "sig", **extra})
    return jwk_dict


def ec_jwk(private_key: Any, kid: str) -> dict[str, Any]:
    jwk_dict = json.loads(ECAlgorithm.to_jwk(private_key.public_key()))
    jwk_dict.update(kid=kid)
    return jwk_dict


class JwksResource(Resource):
    """Serves a JWKS document that tests can change, and counts the fetches."""

    isLeaf = True

    def __init__(self, *keys: dict[str, Any]) -> None:
        super().__init__()
        self.body = json.dumps({"keys": list(keys)}).encode()
        self.code = 200
        self.hits = 0

    def serve(self, *keys: dict[str, Any]) -> None:
        self.body = json.dumps({"keys": list(keys)}).encode()

    def render_GET(self, request: Request) -> bytes:
        self.hits += 1
        request.setResponseCode(self.code)
        request.setHeader(b"content-type", b"application/json")
        return self.body


@implementer(IAgent)
class HangingAgent:
    """An agent whose requests never answer; records them and their cancellation."""

    def __init__(self) -> None:
        self.requests: list[Deferred[Any]] = []
        self.cancelled = 0

    def request(
        self, method: bytes, uri: bytes, headers: Any = None, bodyProducer: Any = None
    ) -> Deferred[Any]:
        def cancel(d: Deferred[Any]) -> None:
            self.cancelled += 1

        d: Deferred[Any] = Deferred(cancel)
        self.requests.append(d)
        return d


class JwtTestCase(SynchronousTestCase):
    """Builds authenticators on a clock that reads ``NOW``."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)

    def authenticator(
        self, agent: Any = None, refresh_s: float = 300.0, **config: Any
    ) -> JwtAuthenticator:
        if "public_key_file" not in config and "jwks_url" not in config:
            config.setdefault("secret", SECRET)
        return JwtAuthenticator(JwtConfig(**config), self.clock, agent, refresh_s=refresh_s)

    def temp_path(self, name: str) -> str:
        """A path in a fresh directory removed after the test (outside the repo)."""
        directory = tempfile.mkdtemp(prefix="avx-auth-")
        self.addCleanup(shutil.rmtree, directory, True)
        return os.path.join(directory, name)

    def key_file(self, private_key: Any) -> str:
        path = self.temp_path("key.pem")
        with open(path, "wb") as f:
            f.write(public_pem(private_key))
        return path

    def refused(
        self, auth: JwtAuthenticator, authorization: bytes | None, reason: str
    ) -> AuthError:
        e = self.assertRaises(AuthError, auth.authenticate, authorization)
        self.assertEqual((e.status, e.reason), (401, reason), e.description)
        return e


class BearerParsingTests(JwtTestCase):
    """The Authorization header: scheme, token, and what a refusal says."""

    def test_missing_header(self) -> None:
        for value in (None, b"", b"   "):
            e = self.refused(self.authenticator(), value, "missing")
            self.assertEqual(e.www_authenticate, 'Bearer realm="avx-gateway"')

    def test_other_scheme_is_missing(self) -> None:
        e = self.refused(self.authenticator(), b"Basic dXNlcjpwYXNz", "missing")
        self.assertEqual(e.www_authenticate, 'Bearer realm="avx-gateway"')

    def test_scheme_is_case_insensitive(self) -> None:
        auth = self.authenticator()
        for scheme in (b"bearer", b"BEARER", b"BeArEr"):
            self.assertEqual(auth.authenticate(scheme + b" " + token()).name, "alice")

    def test_extra_whitespace_around_token(self) -> None:
        self.assertEqual(
            self.authenticator().authenticate(b"Bearer   " + token() + b"  ").name, "alice"
        )

    def test_empty_bearer(self) -> None:
        e = self.refused(self.authenticator(), b"Bearer", "malformed")
        self.assertIn('error="invalid_token"', e.www_authenticate or "")

    def test_token_with_inner_whitespace(self) -> None:
        self.refused(self.authenticator(), b"Bearer abc def", "malformed")

    def test_non_ascii_token(self) -> None:
        self.refused(self.authenticator(), b"Bearer \xff\xfe.x.y", "malformed")

    def test_garbage_tokens(self) -> None:
        auth = self.authenticator()
        for garbage in (b"not-a-jwt", b"a.b.c", b"....", b"e30.e30", b"e30.e30.e30.e30"):
            self.refused(auth, bearer(garbage), "malformed")

    def test_refusal_never_echoes_the_token(self) -> None:
        raw = token(claims(exp=NOW - 1))
        e = self.refused(self.authenticator(), bearer(raw), "expired")
        self.assertEqual(
            e.www_authenticate,
            'Bearer realm="avx-gateway", error="invalid_token", '
            'error_description="the token has expired"',
        )
        for part in raw.split(b"."):
            self.assertNotIn(part.decode(), e.description)
            self.assertNotIn(part.decode(), e.www_authenticate or "")


class HmacTests(JwtTestCase):
    """HS* tokens verified with the configured secret."""

    def test_valid_hs256(self) -> None:
        identity = self.authenticator().authenticate(bearer(token()))
        self.assertEqual(identity.method, "jwt")
        self.assertEqual(identity.name, "alice")
        self.assertEqual(dict(identity.claims), claims())
        self.assertEqual(identity.scopes, frozenset())

    def test_claims_are_read_only(self) -> None:
        identity = self.authenticator().authenticate(bearer(token()))
        with self.assertRaises(TypeError):
            identity.claims["sub"] = "mallory"  # type: ignore[index]

    def test_token_without_sub_has_empty_name(self) -> None:
        identity = self.authenticator().authenticate(bearer(token(claims(sub=None))))
        self.assertEqual(identity.name, "")

    def test_wrong_secret(self) -> None:
        self.refused(self.authenticator(), bearer(token(key=SECRET + "x")), "bad_signature")

    def test_tampered_payload(self) -> None:
        header, _, signature = token().split(b".")
        forged = b64(json.dumps(claims(sub="root")).encode())
        self.refused(
            self.authenticator(), bearer(header + b"." + forged + b"." + signature), "bad_signature"
        )

    def test_other_hmac_algorithm_not_in_config(self) -> None:
        self.refused(self.authenticator(), bearer(token(alg="HS512")), "bad_algorithm")

    def test_several_configured_hmac_algorithms(self) -> None:
        auth = self.authenticator(algorithms=("HS256", "HS512"))
        self.assertEqual(auth.authenticate(bearer(token(alg="HS512"))).name, "alice")
        self.assertEqual(auth.authenticate(bearer(token(alg="HS256"))).name, "alice")

    def test_kid_is_ignored_for_hmac(self) -> None:
        self.assertEqual(self.authenticator().authenticate(bearer(token(kid="k1"))).name, "alice")

    def test_alg_none_is_refused(self) -> None:
        auth = self.authenticator()
        for alg in ("none", "None", "NONE"):
            raw = handmade({"alg": alg, "typ": "JWT"}, claims())
            self.refused(auth, bearer(raw), "bad_algorithm")

    def test_alg_none_with_a_signature_is_refused(self) -> None:
        raw = handmade({"alg": "none"}, claims(), lambda m: b"sig")
        self.refused(self.authenticator(), bearer(raw), "bad_algorithm")

    def test_missing_or_odd_alg_is_refused(self) -> None:
        auth = self.authenticator()
        self.refused(auth, bearer(handmade({"typ": "JWT"}, claims())), "bad_algorithm")
        self.refused(auth, bearer(handmade({"alg": ["HS256"]}, claims())), "bad_algorithm")

    def test_secret_env_is_read_once_at_construction(self) -> None:
        name = "AVX_TEST_JWT_SECRET"
        self.addCleanup(os.environ.pop, name, None)
        os.environ[name] = SECRET
        auth = JwtAuthenticator(JwtConfig(secret_env=name), self.clock)
        os.environ[name] = "another-secret-entirely-that-is-long-enough-for-it"
        self.assertEqual(auth.authenticate(bearer(token())).name, "alice")
        self.refused(auth, bearer(token(key=os.environ[name])), "bad_signature")

    def test_secret_env_not_set(self) -> None:
        config = JwtConfig(secret_env="AVX_TEST_JWT_SECRET_UNSET")
        self.assertRaises(ConfigError, JwtAuthenticator, config, self.clock)

    def test_pem_as_hmac_secret_is_refused_at_construction(self) -> None:
        config = JwtConfig(secret=public_pem(RSA_KEY).decode())
        self.assertRaises(ConfigError, JwtAuthenticator, config, self.clock)


class ClaimValidationTests(JwtTestCase):
    """exp/nbf/iat against the injected clock, iss and aud against the configuration."""

    def test_expiry_boundary_without_leeway(self) -> None:
        auth = self.authenticator()
        raw = bearer(token(claims(exp=NOW + 10)))
        self.clock.advance(9.999)
        self.assertEqual(auth.authenticate(raw).name, "alice")
        self.clock.advance(0.001)
        self.refused(auth, raw, "expired")

    def test_expiry_boundary_with_leeway(self) -> None:
        auth = self.authenticator(leeway_s=30)
        raw = bearer(token(claims(exp=NOW)))
        self.clock.advance(29)
        self.assertEqual(auth.authenticate(raw).name, "alice")
        self.clock.advance(1)
        self.refused(auth, raw, "expired")

    def test_missing_exp(self) -> None:
        e = self.refused(self.authenticator(), bearer(token(claims(exp=None))), "missing_claim")
        self.assertIn("exp", e.description)

    def test_non_numeric_exp(self) -> None:
        auth = self.authenticator()
        for exp in ("soon", True, [NOW + 60]):
            self.refused(auth, bearer(token(claims(exp=exp))), "malformed")

    def test_non_finite_exp(self) -> None:
        sign = lambda m: hmac.new(SECRET.encode(), m, hashlib.sha256).digest()  # noqa: E731
        raw = handmade({"alg": "HS256"}, {"sub": "a", "exp": float("inf")}, sign)
        self.refused(self.authenticator(), bearer(raw), "malformed")

    def test_huge_integer_exp_is_just_far_away(self) -> None:
        raw = bearer(token(claims(exp=10**400)))
        self.assertEqual(self.authenticator().authenticate(raw).name, "alice")

    def test_nbf_in_future(self) -> None:
        auth = self.authenticator()
        raw = bearer(token(claims(nbf=NOW + 60, exp=NOW + 600)))
        self.refused(auth, raw, "not_yet_valid")
        self.clock.advance(60)
        self.assertEqual(auth.authenticate(raw).name, "alice")

    def test_nbf_within_leeway(self) -> None:
        auth = self.authenticator(leeway_s=30)
        self.assertEqual(auth.authenticate(bearer(token(claims(nbf=NOW + 30)))).name, "alice")
        self.refused(auth, bearer(token(claims(nbf=NOW + 31))), "not_yet_valid")

    def test_iat_in_future(self) -> None:
        self.refused(self.authenticator(), bearer(token(claims(iat=NOW + 5))), "not_yet_valid")

    def test_issuer(self) -> None:
        auth = self.authenticator(issuer="https://idp.example/")
        good = token(claims(iss="https://idp.example/"))
        self.assertEqual(auth.authenticate(bearer(good)).name, "alice")
        self.refused(auth, bearer(token(claims(iss="https://evil.example/"))), "bad_issuer")
        self.refused(auth, bearer(token()), "bad_issuer")

    def test_issuer_not_checked_when_not_configured(self) -> None:
        raw = bearer(token(claims(iss="https://anyone.example/")))
        self.assertEqual(self.authenticator().authenticate(raw).name, "alice")

    def test_audience(self) -> None:
        auth = self.authenticator(audience="avx")
        self.assertEqual(auth.authenticate(bearer(token(claims(aud="avx")))).name, "alice")
        self.assertEqual(auth.authenticate(bearer(token(claims(aud=["x", "avx"])))).name, "alice")
        self.refused(auth, bearer(token(claims(aud="other"))), "bad_audience")
        self.refused(auth, bearer(token()), "bad_audience")

    def test_audience_not_checked_when_not_configured(self) -> None:
        raw = bearer(token(claims(aud="whatever")))
        self.assertEqual(self.authenticator().authenticate(raw).name, "alice")


class PublicKeyTests(JwtTestCase):
    """RS*/ES* tokens verified with the public key file, and algorithm confusion."""

    def test_valid_rs256(self) -> None:
        auth = self.authenticator(algorithms=("RS256",), public_key_file=self.key_file(RSA_KEY))
        self.assertEqual(auth.authenticate(bearer(token(key=RSA_KEY, alg="RS256"))).name, "alice")

    def test_rs256_signed_by_another_key(self) -> None:
        auth = self.authenticator(algorithms=("RS256",), public_key_file=self.key_file(RSA_KEY))
        self.refused(auth, bearer(token(key=RSA_KEY_2, alg="RS256")), "bad_signature")

    def test_valid_es256(self) -> None:
        auth = self.authenticator(algorithms=("ES256",), public_key_file=self.key_file(EC_KEY))
        self.assertEqual(auth.authenticate(bearer(token(key=EC_KEY, alg="ES256"))).name, "alice")

    def test_private_key_file_verifies_with_its_public_half(self) -> None:
        path = self.temp_path("private.pem")
        with open(path, "wb") as f:
            f.write(
                RSA_KEY.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
        auth = self.authenticator(algorithms=("RS256",), public_key_file=path)
        self.assertEqual(auth.authenticate(bearer(token(key=RSA_KEY, alg="RS256"))).name, "alice")

    def test_hs256_signed_with_the_public_key_pem_is_refused(self) -> None:
        pem = public_pem(RSA_KEY)
        raw = handmade(
            {"alg": "HS256", "typ": "JWT"},
            claims(),
            lambda m: hmac.new(pem, m, hashlib.sha256).digest(),
        )
        auth = self.authenticator(algorithms=("RS256",), public_key_file=self.key_file(RSA_KEY))
        self.refused(auth, bearer(raw), "bad_algorithm")

    def test_rs_token_with_alg_not_in_config(self) -> None:
        auth = self.authenticator(algorithms=("RS256",), public_key_file=self.key_file(RSA_KEY))
        self.refused(auth, bearer(token(key=RSA_KEY, alg="PS256")), "bad_algorithm")
        self.refused(auth, bearer(token(key=EC_KEY, alg="ES256")), "bad_algorithm")

    def test_configured_algorithm_the_key_cannot_serve(self) -> None:
        auth = self.authenticator(
            algorithms=("RS256", "ES256"), public_key_file=self.key_file(RSA_KEY)
        )
        self.refused(auth, bearer(token(key=EC_KEY, alg="ES256")), "bad_algorithm")

    def test_key_file_that_fits_no_algorithm(self) -> None:
        config = JwtConfig(algorithms=("ES256",), public_key_file=self.key_file(RSA_KEY))
        self.assertRaises(ConfigError, JwtAuthenticator, config, self.clock)

    def test_mixed_or_keyless_configuration_is_refused(self) -> None:
        mixed = JwtConfig(algorithms=("HS256", "RS256"), secret=SECRET)
        self.assertRaises(ConfigError, JwtAuthenticator, mixed, self.clock)
        keyless = JwtConfig(algorithms=("RS256",))
        self.assertRaises(ConfigError, JwtAuthenticator, keyless, self.clock)

    def test_unreadable_key_file(self) -> None:
        config = JwtConfig(algorithms=("RS256",), public_key_file=self.temp_path("absent.pem"))
        self.assertRaises(ConfigError, JwtAuthenticator, config, self.clock)


class ScopeTests(JwtTestCase):
    """Scopes from ``scope``/``scp`` and the 403 for missing ones."""

    def test_scope_string(self) -> None:
        identity = self.authenticator().authenticate(bearer(token(claims(scope="a  b:read c"))))
        self.assertEqual(identity.scopes, frozenset({"a", "b:read", "c"}))

    def test_scp_list_and_string(self) -> None:
        auth = self.authenticator()
        self.assertEqual(
            auth.authenticate(bearer(token(claims(scp=["x", "y"])))).scopes, frozenset({"x", "y"})
        )
        self.assertEqual(
            auth.authenticate(bearer(token(claims(scp="x y")))).scopes, frozenset({"x", "y"})
        )

    def test_both_claims_are_merged(self) -> None:
        identity = self.authenticator().authenticate(bearer(token(claims(scope="a", scp=["b"]))))
        self.assertEqual(identity.scopes, frozenset({"a", "b"}))

    def test_non_string_scopes_are_ignored(self) -> None:
        identity = self.authenticator().authenticate(bearer(token(claims(scp=["a", 1, None]))))
        self.assertEqual(identity.scopes, frozenset({"a"}))

    def test_check_scopes_passes(self) -> None:
        auth = self.authenticator()
        identity = auth.authenticate(bearer(token(claims(scope="users:read users:write"))))
        auth.check_scopes(identity, ["users:read"])
        auth.check_scopes(identity, [])

    def test_missing_scope_is_403_listing_it(self) -> None:
        auth = self.authenticator()
        identity = auth.authenticate(bearer(token(claims(scope="users:read"))))
        e = self.assertRaises(
            AuthError, auth.check_scopes, identity, ["users:read", "users:write", "admin"]
        )
        self.assertEqual((e.status, e.reason), (403, "insufficient_scope"))
        self.assertEqual(e.description, "missing scope: users:write admin")
        self.assertEqual(
            e.www_authenticate,
            'Bearer realm="avx-gateway", error="insufficient_scope", '
            'error_description="missing scope: users:write admin", '
            'scope="users:read users:write admin"',
        )


class ClaimHeaderTests(JwtTestCase):
    """``claim_headers`` and ``stripped_headers`` from ``forward_claims``."""

    FORWARD = (
        ("sub", "X-User-Id"),
        ("roles", "X-Roles"),
        ("admin", "X-Admin"),
        ("tenant", "X-Tenant"),
        ("note", "X-Note"),
    )

    def test_present_claims_become_headers(self) -> None:
        auth = self.authenticator(forward_claims=self.FORWARD)
        identity = auth.authenticate(
            bearer(token(claims(roles=["a", "b"], admin=True, note="caf\u00e9")))
        )
        self.assertEqual(
            auth.claim_headers(identity),
            [
                (b"X-User-Id", b"alice"),
                (b"X-Roles", b'["a","b"]'),
                (b"X-Admin", b"true"),
                (b"X-Note", "caf\u00e9".encode()),
            ],
        )

    def test_control_characters_cannot_inject_headers(self) -> None:
        auth = self.authenticator(forward_claims=(("sub", "X-User-Id"),))
        identity = auth.authenticate(bearer(token(claims(sub="a\r\nX-Admin: 1"))))
        self.assertEqual(auth.claim_headers(identity), [(b"X-User-Id", b"a  X-Admin: 1")])

    def test_numbers_are_json(self) -> None:
        auth = self.authenticator(forward_claims=(("exp", "X-Exp"),))
        identity = auth.authenticate(bearer(token()))
        self.assertEqual(auth.claim_headers(identity), [(b"X-Exp", str(NOW + 60).encode())])

    def test_stripped_headers_are_lowercased(self) -> None:
        auth = self.authenticator(forward_claims=self.FORWARD)
        self.assertEqual(
            auth.stripped_headers,
            frozenset({b"x-user-id", b"x-roles", b"x-admin", b"x-tenant", b"x-note"}),
        )
        self.assertEqual(self.authenticator().stripped_headers, frozenset())

    def test_api_key_identity_has_no_claim_headers(self) -> None:
        auth = self.authenticator(forward_claims=self.FORWARD)
        self.assertEqual(auth.claim_headers(Identity("api_key", "ci", {}, frozenset())), [])


class JwksTests(JwtTestCase):
    """Keys from a JWKS document: lookup by kid, refresh, rotation, failures."""

    def setUp(self) -> None:
        super().setUp()
        self.jwks = JwksResource(rsa_jwk(RSA_KEY, "k1"))
        self.agent = RequestTraversalAgent(self.jwks)
        self.logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def jwks_authenticator(self, agent: Any = None, **config: Any) -> JwtAuthenticator:
        config.setdefault("algorithms", ("RS256",))
        auth = self.authenticator(agent or self.agent, jwks_url=JWKS_URL, **config)
        self.addCleanup(auth.stop)
        return auth

    def warnings(self) -> list[str]:
        return [e["log_format"] for e in self.logged if e["log_level"].name == "warn"]

    def test_start_fetches_and_keys_are_used_by_kid(self) -> None:
        auth = self.jwks_authenticator()
        auth.start()
        self.assertEqual(self.jwks.hits, 1)
        raw = token(key=RSA_KEY, alg="RS256", kid="k1")
        self.assertEqual(auth.authenticate(bearer(raw)).name, "alice")

    def test_es256_from_jwks(self) -> None:
        self.jwks.serve(ec_jwk(EC_KEY, "ec1"), rsa_jwk(RSA_KEY, "k1"))
        auth = self.jwks_authenticator(algorithms=("ES256", "RS256"))
        self.successResultOf(auth.refresh())
        self.assertEqual(
            auth.authenticate(bearer(token(key=EC_KEY, alg="ES256", kid="ec1"))).name, "alice"
        )
        self.refused(auth, bearer(token(key=RSA_KEY, alg="RS256", kid="ec1")), "bad_algorithm")

    def test_periodic_refresh_and_stop_leaves_no_delayed_calls(self) -> None:
        auth = self.jwks_authenticator(refresh_s=120)
        auth.start()
        self.assertEqual(self.jwks.hits, 1)
        self.clock.advance(119)
        self.assertEqual(self.jwks.hits, 1)
        self.clock.advance(1)
        self.assertEqual(self.jwks.hits, 2)
        auth.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(3000)
        self.assertEqual(self.jwks.hits, 2)

    def test_start_without_jwks_does_nothing(self) -> None:
        auth = self.authenticator()
        auth.start()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertIsNone(self.successResultOf(auth.refresh()))
        auth.stop()

    def test_unknown_kid_triggers_one_rate_limited_refresh(self) -> None:
        auth = self.jwks_authenticator()
        auth.start()
        raw = bearer(token(key=RSA_KEY, alg="RS256", kid="nope"))
        e = self.refused(auth, raw, "unknown_kid")
        self.assertIn('error="invalid_token"', e.www_authenticate or "")
        self.assertEqual(self.jwks.hits, 2)
        self.refused(auth, raw, "unknown_kid")
        self.clock.advance(29)
        self.refused(auth, raw, "unknown_kid")
        self.assertEqual(self.jwks.hits, 2)
        self.clock.advance(1)
        self.refused(auth, raw, "unknown_kid")
        self.assertEqual(self.jwks.hits, 3)

    def test_no_unknown_kid_refresh_while_one_is_in_flight(self) -> None:
        agent = HangingAgent()
        auth = self.jwks_authenticator(agent)
        auth.refresh()
        self.assertEqual(len(agent.requests), 1)
        self.refused(auth, bearer(token(key=RSA_KEY, alg="RS256", kid="k1")), "unknown_kid")
        self.assertEqual(len(agent.requests), 1)

    def test_no_unknown_kid_refresh_after_stop(self) -> None:
        auth = self.jwks_authenticator()
        auth.start()
        auth.stop()
        self.refused(auth, bearer(token(key=RSA_KEY, alg="RS256", kid="new")), "unknown_kid")
        self.assertEqual(self.jwks.hits, 1)

    def test_key_rotation(self) -> None:
        auth = self.jwks_authenticator()
        auth.start()
        old = bearer(token(key=RSA_KEY, alg="RS256", kid="k1"))
        new = bearer(token(key=RSA_KEY_2, alg="RS256", kid="k2"))
        self.assertEqual(auth.authenticate(old).name, "alice")
        self.jwks.serve(rsa_jwk(RSA_KEY_2, "k2"))
        self.refused(auth, new, "unknown_kid")  # triggers the refresh
        self.assertEqual(auth.authenticate(new).name, "alice")
        self.refused(auth, old, "unknown_kid")

    def test_refresh_failure_keeps_old_keys(self) -> None:
        auth = self.jwks_authenticator()
        self.successResultOf(auth.refresh())
        raw = bearer(token(key=RSA_KEY, alg="RS256", kid="k1"))
        for code, body in (
            (500, self.jwks.body),
            (200, b"not json"),
            (200, b'{"keys": []}'),
            (200, b'{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}'),
        ):
            self.jwks.code, self.jwks.body = code, body
            self.assertIsNone(self.successResultOf(auth.refresh()))
            self.assertEqual(auth.authenticate(raw).name, "alice")
        self.assertEqual(len(self.warnings()), 4)
        self.assertIn("failed", self.warnings()[0])

    def test_refresh_timeout_keeps_old_keys_and_clears_timers(self) -> None:
        auth = self.jwks_authenticator()
        self.successResultOf(auth.refresh())
        agent = HangingAgent()
        assert auth.jwks is not None
        auth.jwks._http = None
        auth.jwks._agent = agent
        d = auth.refresh()
        self.assertNoResult(d)
        self.clock.advance(auth.timeout_s)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(agent.cancelled, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.warnings()), 1)
        self.assertEqual(
            auth.authenticate(bearer(token(key=RSA_KEY, alg="RS256", kid="k1"))).name, "alice"
        )

    def test_concurrent_refreshes_share_one_fetch(self) -> None:
        agent = HangingAgent()
        auth = self.jwks_authenticator(agent)
        first, second = auth.refresh(), auth.refresh()
        self.assertEqual(len(agent.requests), 1)
        self.assertNoResult(first)
        self.assertNoResult(second)
        auth.stop()
        self.assertIsNone(self.successResultOf(first))
        self.assertIsNone(self.successResultOf(second))

    def test_stop_cancels_fetch_in_flight_quietly(self) -> None:
        agent = HangingAgent()
        auth = self.jwks_authenticator(agent)
        auth.start()
        self.assertEqual(len(agent.requests), 1)
        auth.stop()
        self.assertEqual(agent.cancelled, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.warnings(), [])

    def test_token_without_kid_uses_the_only_key(self) -> None:
        auth = self.jwks_authenticator()
        self.successResultOf(auth.refresh())
        self.assertEqual(auth.authenticate(bearer(token(key=RSA_KEY, alg="RS256"))).name, "alice")
        self.jwks.serve(rsa_jwk(RSA_KEY, "k1"), rsa_jwk(RSA_KEY_2, "k2"))
        self.successResultOf(auth.refresh())
        self.refused(auth, bearer(token(key=RSA_KEY, alg="RS256")), "unknown_kid")

    def test_jwk_alg_restricts_the_algorithm(self) -> None:
        self.jwks.serve(rsa_jwk(RSA_KEY, "k1", alg="RS256"))
        auth = self.jwks_authenticator(algorithms=("RS256", "PS256"))
        self.successResultOf(auth.refresh())
        self.assertEqual(
            auth.authenticate(bearer(token(key=RSA_KEY, alg="RS256", kid="k1"))).name, "alice"
        )
        self.refused(auth, bearer(token(key=RSA_KEY, alg="PS256", kid="k1")), "bad_algorithm")

    def test_encryption_keys_are_skipped(self) -> None:
        self.jwks.serve(rsa_jwk(RSA_KEY, "enc", use="enc"), rsa_jwk(RSA_KEY, "k1"))
        auth = self.jwks_authenticator()
        self.successResultOf(auth.refresh())
        self.refused(auth, bearer(token(key=RSA_KEY, alg="RS256", kid="enc")), "unknown_kid")

    def test_hmac_token_with_jwks_kid_is_refused(self) -> None:
        auth = self.jwks_authenticator()
        self.successResultOf(auth.refresh())
        pem = public_pem(RSA_KEY)
        raw = handmade(
            {"alg": "HS256", "kid": "k1"},
            claims(),
            lambda m: hmac.new(pem, m, hashlib.sha256).digest(),
        )
        self.refused(auth, bearer(raw), "bad_algorithm")


ISSUER = "https://idp.example/realms/avx"


class OidcProvider(Resource):
    """``/.well-known/openid-configuration`` and ``/keys`` of an issuer, with headers and
    failures the tests choose; counts the fetches of each."""

    isLeaf = True

    def __init__(self, jwks: JwksResource) -> None:
        super().__init__()
        self.jwks = jwks
        self.document: dict[str, Any] = {"issuer": ISSUER, "jwks_uri": ISSUER + "/keys"}
        self.discovery_code = 200
        self.discovery_hits = 0
        self.discovery_headers: dict[bytes, bytes] = {}
        self.jwks_headers: dict[bytes, bytes] = {}
        self.paths: list[bytes] = []

    def render_GET(self, request: Request) -> bytes:
        self.paths.append(request.path)
        if request.path.endswith(b"/.well-known/openid-configuration"):
            self.discovery_hits += 1
            request.setResponseCode(self.discovery_code)
            for name, value in self.discovery_headers.items():
                request.setHeader(name, value)
            return json.dumps(self.document).encode()
        if request.path.endswith(b"/keys") or request.path.endswith(b"/keys2"):
            for name, value in self.jwks_headers.items():
                request.setHeader(name, value)
            return self.jwks.render_GET(request)
        request.setResponseCode(404)
        return b"not found"


class OidcTests(JwtTestCase):
    """``oidc_issuer``: discovery, its issuer check, refresh on cache headers, metrics."""

    def setUp(self) -> None:
        super().setUp()
        self.jwks = JwksResource(rsa_jwk(RSA_KEY, "k1"), ec_jwk(EC_KEY, "ec1"))
        self.idp = OidcProvider(self.jwks)
        self.agent = RequestTraversalAgent(self.idp)
        self.metrics = GatewayMetrics(process=False)
        self.logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def oidc(self, agent: Any = None, refresh_s: float = 300.0, **config: Any) -> JwtAuthenticator:
        config.setdefault("algorithms", ("RS256", "ES256"))
        config.setdefault("oidc_issuer", ISSUER)
        auth = JwtAuthenticator(
            JwtConfig(**config),
            self.clock,
            agent or self.agent,
            refresh_s=refresh_s,
            metrics=self.metrics,
        )
        self.addCleanup(auth.stop)
        return auth

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0

    def refreshes(self, trigger: str, result: str) -> float:
        return self.sample("avx_jwks_refreshes_total", trigger=trigger, result=result)

    def errors(self, kind: str, reason: str) -> float:
        return self.sample("avx_idp_errors_total", kind=kind, reason=reason)

    def issued(
        self, key: Any = RSA_KEY, alg: str = "RS256", kid: str = "k1", **extra: Any
    ) -> bytes:
        extra.setdefault("iss", ISSUER)
        extra.setdefault("exp", NOW + 100_000)
        return bearer(token(claims(**extra), key=key, alg=alg, kid=kid))

    def test_discovery_finds_the_jwks_and_its_keys_verify_tokens(self) -> None:
        auth = self.oidc()
        auth.start()
        self.assertEqual(
            self.idp.paths, [b"/realms/avx/.well-known/openid-configuration", b"/realms/avx/keys"]
        )
        self.assertEqual(auth.authenticate(self.issued()).name, "alice")
        self.assertEqual(auth.authenticate(self.issued(EC_KEY, "ES256", "ec1")).name, "alice")
        self.assertEqual(self.refreshes("discovery", "ok"), 1)

    def test_trailing_slash_issuer(self) -> None:
        self.idp.document["issuer"] = ISSUER + "/"
        auth = self.oidc(oidc_issuer=ISSUER + "/")
        auth.start()
        self.assertEqual(self.idp.paths[0], b"/realms/avx/.well-known/openid-configuration")
        self.assertEqual(auth.authenticate(self.issued(iss=ISSUER + "/")).name, "alice")

    def test_tokens_must_be_issued_by_the_oidc_issuer(self) -> None:
        auth = self.oidc()
        auth.start()
        self.refused(auth, self.issued(iss="https://evil.example"), "bad_issuer")
        self.refused(auth, self.issued(iss=None), "bad_issuer")
        other = self.oidc(issuer="https://tokens.example")
        other.start()
        self.assertEqual(
            other.authenticate(self.issued(iss="https://tokens.example")).name, "alice"
        )

    def test_a_document_for_another_issuer_is_refused(self) -> None:
        for document in (
            {"issuer": "https://evil.example", "jwks_uri": ISSUER + "/keys"},
            {"jwks_uri": ISSUER + "/keys"},
            {"issuer": ISSUER},
            {"issuer": ISSUER, "jwks_uri": "http://evil.example/keys"},
            ["not", "an", "object"],
        ):
            self.idp.document = document  # type: ignore[assignment]
            auth = self.oidc()
            self.successResultOf(auth.refresh())
            self.assertEqual(auth.jwks.keys.count, 0)  # type: ignore[union-attr]
        self.refused(auth, self.issued(), "unknown_kid")
        self.assertEqual(self.jwks.hits, 0)
        self.assertEqual(self.errors("discovery", "body"), 6)  # 5, and the unknown kid's
        self.assertEqual(self.refreshes("discovery", "error"), 6)

    def test_oidc_issuer_must_be_https_or_loopback(self) -> None:
        for issuer in ("http://idp.example", "http://192.168.1.1:8080"):
            self.assertRaises(ConfigError, self.oidc, oidc_issuer=issuer)
        for issuer in ("http://127.0.0.1:8080", "http://localhost:1", "https://idp.example"):
            self.oidc(oidc_issuer=issuer)
        self.assertRaises(ConfigError, self.oidc, jwks_url=JWKS_URL)

    def test_plain_http_jwks_uri_on_loopback_is_fine(self) -> None:
        self.idp.document = {"issuer": ISSUER, "jwks_uri": "http://127.0.0.1:9/keys"}
        auth = self.oidc()
        self.successResultOf(auth.refresh())
        self.assertEqual(auth.authenticate(self.issued()).name, "alice")

    def test_jwks_refresh_follows_max_age(self) -> None:
        self.idp.jwks_headers = {b"Cache-Control": b"public, max-age=900"}
        auth = self.oidc(refresh_s=300)
        auth.start()
        self.clock.advance(899)
        self.assertEqual(self.jwks.hits, 1)
        self.clock.advance(1)
        self.assertEqual(self.jwks.hits, 2)
        self.assertEqual(self.refreshes("schedule", "ok"), 1)

    def test_short_or_no_store_lifetimes_are_bounded(self) -> None:
        for header in (b"max-age=1", b"no-store", b"no-cache, max-age=600"):
            self.idp.jwks_headers = {b"Cache-Control": header}
            self.jwks.hits = 0
            auth = self.oidc()
            auth.start()
            self.clock.advance(59)
            self.assertEqual(self.jwks.hits, 1, header)
            self.clock.advance(1)
            self.assertEqual(self.jwks.hits, 2, header)
            auth.stop()

    def test_without_cache_headers_refresh_s_applies(self) -> None:
        auth = self.oidc(refresh_s=120)
        auth.start()
        self.clock.advance(119)
        self.assertEqual(self.jwks.hits, 1)
        self.clock.advance(1)
        self.assertEqual(self.jwks.hits, 2)
        auth.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_discovery_is_reused_for_its_own_lifetime(self) -> None:
        self.idp.discovery_headers = {b"Cache-Control": b"max-age=1000"}
        auth = self.oidc(refresh_s=300)
        auth.start()
        self.clock.pump([300, 300, 300])  # three JWKS refreshes, no new discovery
        self.assertEqual((self.idp.discovery_hits, self.jwks.hits), (1, 4))
        self.clock.advance(300)
        self.assertEqual((self.idp.discovery_hits, self.jwks.hits), (2, 5))
        self.assertEqual(self.refreshes("discovery", "ok"), 2)
        self.assertEqual(self.refreshes("schedule", "ok"), 3)

    def test_a_failed_jwks_fetch_rediscovers_and_follows_a_moved_jwks_uri(self) -> None:
        auth = self.oidc()
        auth.start()
        self.jwks.code = 404
        self.clock.advance(300)
        self.assertEqual(self.errors("jwks", "status"), 1)
        self.assertEqual(self.refreshes("schedule", "error"), 1)
        self.assertEqual(auth.authenticate(self.issued()).name, "alice")  # old keys kept
        self.jwks.code = 200
        self.idp.document["jwks_uri"] = ISSUER + "/keys2"
        self.jwks.serve(rsa_jwk(RSA_KEY_2, "k2"))
        self.clock.advance(30)  # retried sooner than refresh_s
        self.assertEqual(self.idp.discovery_hits, 2)
        self.assertEqual(self.idp.paths[-1], b"/realms/avx/keys2")
        self.assertEqual(auth.authenticate(self.issued(RSA_KEY_2, kid="k2")).name, "alice")

    def test_failed_rediscovery_keeps_the_known_jwks_uri(self) -> None:
        self.idp.discovery_headers = {b"Cache-Control": b"max-age=60"}
        auth = self.oidc()
        auth.start()
        self.idp.discovery_code = 500
        self.jwks.serve(rsa_jwk(RSA_KEY_2, "k2"))
        self.clock.advance(300)
        self.assertEqual(self.idp.discovery_hits, 2)
        self.assertEqual(self.errors("discovery", "status"), 1)
        self.assertEqual(self.refreshes("discovery", "ok"), 2)
        self.assertEqual(auth.authenticate(self.issued(RSA_KEY_2, kid="k2")).name, "alice")

    def test_a_flood_of_unknown_kids_makes_one_fetch(self) -> None:
        auth = self.oidc()
        auth.start()
        for i in range(1000):
            self.refused(auth, self.issued(kid=f"bogus-{i}"), "unknown_kid")
        self.assertEqual((self.idp.discovery_hits, self.jwks.hits), (1, 2))
        self.assertEqual(self.refreshes("unknown_kid", "ok"), 1)

    def test_key_rotation_via_unknown_kid_keeps_old_keys_until_the_new_set(self) -> None:
        agent = HangingAgent()
        auth = self.oidc()
        auth.start()
        auth.jwks._http = None  # type: ignore[union-attr]
        auth.jwks._agent = agent  # type: ignore[union-attr]
        self.refused(auth, self.issued(RSA_KEY_2, kid="k2"), "unknown_kid")
        self.assertEqual(len(agent.requests), 1)
        self.assertEqual(auth.authenticate(self.issued()).name, "alice")  # while in flight
        self.clock.advance(auth.timeout_s)
        self.assertEqual(auth.authenticate(self.issued()).name, "alice")  # after it failed
        self.assertEqual(self.errors("jwks", "timeout"), 1)
        self.assertEqual(self.refreshes("unknown_kid", "error"), 1)

    def test_discovery_timeout_is_counted_and_retried(self) -> None:
        agent = HangingAgent()
        auth = self.oidc(agent)
        auth.start()
        self.clock.advance(auth.timeout_s)
        self.assertEqual(agent.cancelled, 1)
        self.assertEqual(self.errors("discovery", "timeout"), 1)
        self.assertEqual(self.refreshes("discovery", "error"), 1)
        self.clock.advance(30)
        self.assertEqual(len(agent.requests), 2)
        auth.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(agent.cancelled, 2)

    def test_stop_during_discovery_is_quiet(self) -> None:
        agent = HangingAgent()
        auth = self.oidc(agent)
        auth.start()
        auth.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.refreshes("discovery", "error"), 0)
        self.assertEqual([e for e in self.logged if e["log_level"].name == "warn"], [])

    def test_jwks_url_refreshes_are_counted_by_trigger(self) -> None:
        auth = JwtAuthenticator(
            JwtConfig(algorithms=("RS256",), jwks_url=JWKS_URL),
            self.clock,
            RequestTraversalAgent(self.jwks),
            metrics=self.metrics,
        )
        self.addCleanup(auth.stop)
        auth.start()
        self.refused(auth, bearer(token(key=RSA_KEY_2, alg="RS256", kid="k2")), "unknown_kid")
        self.jwks.code = 503
        self.clock.advance(300)
        self.assertEqual(self.refreshes("schedule", "ok"), 1)
        self.assertEqual(self.refreshes("unknown_kid", "ok"), 1)
        self.assertEqual(self.refreshes("schedule", "error"), 1)
        self.assertEqual(self.errors("jwks", "status"), 1)
        self.assertEqual(self.idp.discovery_hits, 0)
