"""Tests for avx_twisted.auth.oauth2: RFC 7662 introspection, its cache, one call per token,
failing closed with a breaker, and the metrics. No sockets: a twisted.web resource behind
treq's RequestTraversalAgent plays the provider, and agents that hang or fail play its outages.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from typing import Any
from urllib.parse import parse_qs

from treq.testing import RequestTraversalAgent
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseNeverReceived
from twisted.web.iweb import IAgent
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from avx_twisted._configmodel import ConfigError, OAuth2Config
from avx_twisted.auth import AuthError, Identity
from avx_twisted.auth.filter import AuthFilter
from avx_twisted.auth.oauth2 import IDP_BREAKER, OAuth2Authenticator
from avx_twisted.h1 import Fields
from avx_twisted.metrics import GatewayMetrics

NOW = 1_700_000_000
URL = "https://idp.example/oauth2/introspect"
TOKEN = b"opaque-token-0123456789"
OTHER = b"another-token-abcdef"


def active(**extra: Any) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "active": True,
        "sub": "alice",
        "client_id": "app",
        "scope": "users:read users:write",
        "exp": NOW + 600,
        "iat": NOW,
        "iss": "https://idp.example",
        "aud": "urn:api",
        "token_type": "Bearer",
    }
    answer.update(extra)
    return {k: v for k, v in answer.items() if v is not None}


class Introspection(Resource):
    """The provider's introspection endpoint: answers by token, records every call, and can
    hold its answers until :meth:`release`."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.answers: dict[str, Any] = {}
        self.calls: list[dict[str, Any]] = []
        self.code = 200
        self.raw: bytes | None = None
        self.hold = False
        self.held: list[Request] = []

    def render_POST(self, request: Request) -> Any:
        form = {k.decode(): v[0].decode() for k, v in parse_qs(request.content.read()).items()}
        self.calls.append({"form": form, "headers": request.requestHeaders, "uri": request.uri})
        request.token = form.get("token", "")  # type: ignore[attr-defined]
        if self.hold:
            self.held.append(request)
            return NOT_DONE_YET
        return self.body(request)

    def body(self, request: Request) -> bytes:
        request.setResponseCode(self.code)
        request.setHeader(b"content-type", b"application/json")
        if self.raw is not None:
            return self.raw
        answer = self.answers.get(request.token, {"active": False})  # type: ignore[attr-defined]
        return json.dumps(answer).encode()

    def release(self) -> None:
        held, self.held = self.held, []
        for request in held:
            request.write(self.body(request))
            request.finish()


@implementer(IAgent)
class HangingAgent:
    """Requests never answer; records them and their cancellation, which fails the request
    the way twisted.web's Agent does (not with a bare CancelledError)."""

    def __init__(self) -> None:
        self.requests: list[Deferred[Any]] = []
        self.cancelled = 0

    def request(self, method: bytes, uri: bytes, headers: Any = None, body: Any = None) -> Any:
        def cancel(d: Deferred[Any]) -> None:
            self.cancelled += 1
            d.errback(ResponseNeverReceived([Failure(CancelledError())]))

        d: Deferred[Any] = Deferred(cancel)
        self.requests.append(d)
        return d


@implementer(IAgent)
class RefusingAgent:
    """Every connection is refused."""

    def __init__(self) -> None:
        self.calls = 0

    def request(self, method: bytes, uri: bytes, headers: Any = None, body: Any = None) -> Any:
        self.calls += 1
        return fail(ConnectionRefusedError())


class FakeRequest:
    def __init__(self, authorization: bytes | None) -> None:
        pairs = [(b"authorization", authorization)] if authorization is not None else []
        self.fields = Fields(pairs)


class FakeContext:
    def __init__(self) -> None:
        self.identity: Identity | None = None
        self.tls = None
        self.client_ip = "127.0.0.1"
        self.request_id = b"req-1"


def bearer(token: bytes) -> FakeRequest:
    return FakeRequest(b"Bearer " + token)


class OAuth2TestCase(SynchronousTestCase):
    """An authenticator on a clock at ``NOW`` in front of :class:`Introspection`."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.idp = Introspection()
        self.idp.answers[TOKEN.decode()] = active()
        self.agent: Any = RequestTraversalAgent(self.idp)
        self.metrics = GatewayMetrics(process=False)

    def authenticator(self, agent: Any = None, **config: Any) -> OAuth2Authenticator:
        config.setdefault("introspection_url", URL)
        config.setdefault("client_id", "gateway")
        config.setdefault("client_secret", "s3cret")
        auth = OAuth2Authenticator(
            OAuth2Config(**config), self.clock, agent or self.agent, metrics=self.metrics
        )
        self.addCleanup(auth.stop)
        return auth

    def check(
        self, auth: OAuth2Authenticator, request: FakeRequest, scopes: tuple[str, ...] = ()
    ) -> Identity:
        result = auth.check(request, FakeContext(), scopes)
        if isinstance(result, Deferred):
            return self.successResultOf(result)
        return result

    def refused(
        self,
        auth: OAuth2Authenticator,
        request: FakeRequest,
        status: int,
        reason: str,
        scopes: tuple[str, ...] = (),
    ) -> AuthError:
        try:
            result = auth.check(request, FakeContext(), scopes)
        except AuthError as e:
            error = e
        else:
            self.assertIsInstance(result, Deferred)
            error = self.failureResultOf(result, AuthError).value
        self.assertEqual((error.status, error.reason), (status, reason), error.description)
        return error

    def sample(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return value or 0.0


class RequestTests(OAuth2TestCase):
    """What is sent to the provider."""

    def test_basic_client_auth_form_post(self) -> None:
        auth = self.authenticator()
        self.check(auth, bearer(TOKEN))
        (call,) = self.idp.calls
        self.assertEqual(call["form"], {"token": TOKEN.decode(), "token_type_hint": "access_token"})
        headers = call["headers"]
        self.assertEqual(
            headers.getRawHeaders(b"authorization"),
            [b"Basic " + base64.b64encode(b"gateway:s3cret")],
        )
        self.assertEqual(
            headers.getRawHeaders(b"content-type"), [b"application/x-www-form-urlencoded"]
        )
        self.assertEqual(headers.getRawHeaders(b"accept"), [b"application/json"])
        self.assertEqual(call["uri"], b"/oauth2/introspect")

    def test_basic_credentials_are_form_encoded_first(self) -> None:
        auth = self.authenticator(client_id="gw:1", client_secret="p@ss word/+")
        self.check(auth, bearer(TOKEN))
        value = self.idp.calls[0]["headers"].getRawHeaders(b"authorization")[0]
        decoded = base64.b64decode(value.split()[1])
        self.assertEqual(decoded, b"gw%3A1:p%40ss%20word%2F%2B")

    def test_post_client_auth_sends_credentials_in_the_form(self) -> None:
        auth = self.authenticator(client_auth="post")
        self.check(auth, bearer(TOKEN))
        (call,) = self.idp.calls
        self.assertEqual(
            call["form"],
            {
                "token": TOKEN.decode(),
                "token_type_hint": "access_token",
                "client_id": "gateway",
                "client_secret": "s3cret",
            },
        )
        self.assertIsNone(call["headers"].getRawHeaders(b"authorization"))

    def test_no_or_malformed_bearer_token_makes_no_call(self) -> None:
        auth = self.authenticator()
        e = self.refused(auth, FakeRequest(None), 401, "missing")
        self.assertEqual(e.www_authenticate, 'Bearer realm="avx-gateway"')
        self.refused(auth, FakeRequest(b"Basic dXNlcjpwYXNz"), 401, "missing")
        e = self.refused(auth, FakeRequest(b"Bearer two tokens"), 401, "malformed")
        self.assertIn('error="invalid_token"', e.www_authenticate or "")
        self.assertEqual(self.idp.calls, [])

    def test_secret_from_the_environment_or_none_at_all(self) -> None:
        self.patch(os, "environ", {"AVX_TEST_IDP_SECRET": "from-env"})
        auth = self.authenticator(client_secret="", client_secret_env="AVX_TEST_IDP_SECRET")
        self.check(auth, bearer(TOKEN))
        value = self.idp.calls[0]["headers"].getRawHeaders(b"authorization")[0]
        self.assertEqual(base64.b64decode(value.split()[1]), b"gateway:from-env")
        self.assertRaises(ConfigError, self.authenticator, client_secret="")

    def test_plain_http_only_to_loopback(self) -> None:
        for url in ("http://127.0.0.1:9000/introspect", "http://[::1]/i", "http://localhost/i"):
            self.authenticator(introspection_url=url)
        for url in ("http://idp.example/introspect", "http://10.0.0.1/introspect", "ftp://x/"):
            self.assertRaises(ConfigError, self.authenticator, introspection_url=url)


class AnswerTests(OAuth2TestCase):
    """How an introspection answer is judged."""

    def test_active_token_is_the_identity_with_every_member_as_claims(self) -> None:
        self.idp.answers[TOKEN.decode()] = active(cnf={"x5t#S256": "abc"}, tenant="acme")
        identity = self.check(self.authenticator(), bearer(TOKEN))
        self.assertEqual((identity.method, identity.name), ("oauth2", "alice"))
        self.assertEqual(identity.scopes, frozenset({"users:read", "users:write"}))
        self.assertEqual(identity.claims["cnf"], {"x5t#S256": "abc"})
        self.assertEqual(identity.claims["tenant"], "acme")
        self.assertIs(identity.claims["active"], True)
        with self.assertRaises(TypeError):
            identity.claims["sub"] = "mallory"  # type: ignore[index]

    def test_name_falls_back_to_client_id(self) -> None:
        self.idp.answers[TOKEN.decode()] = active(sub=None)
        self.assertEqual(self.check(self.authenticator(), bearer(TOKEN)).name, "app")
        self.idp.answers[OTHER.decode()] = active(sub=None, client_id=None)
        self.assertEqual(self.check(self.authenticator(), bearer(OTHER)).name, "")

    def test_inactive_token_is_401_invalid_token_without_echoing_it(self) -> None:
        e = self.refused(self.authenticator(), bearer(OTHER), 401, "inactive")
        self.assertIn('error="invalid_token"', e.www_authenticate or "")
        self.assertNotIn(OTHER.decode(), str(e) + repr(e) + (e.www_authenticate or ""))

    def test_active_must_be_true_itself(self) -> None:
        self.idp.answers[TOKEN.decode()] = active(active="true")
        self.refused(self.authenticator(), bearer(TOKEN), 503, "idp_unavailable")

    def test_time_claims(self) -> None:
        cases = [
            (active(exp=NOW), "expired"),
            (active(exp=NOW - 1), "expired"),
            (active(nbf=NOW + 1), "not_yet_valid"),
            (active(exp="soon"), "malformed"),
            (active(nbf=True), "malformed"),
            (active(exp=float("nan")), "malformed"),
        ]
        for answer, reason in cases:
            self.idp.answers[TOKEN.decode()] = answer
            self.refused(self.authenticator(), bearer(TOKEN), 401, reason)
        self.idp.answers[TOKEN.decode()] = active(exp=NOW + 1, nbf=NOW)
        self.assertEqual(self.check(self.authenticator(), bearer(TOKEN)).name, "alice")

    def test_issuer(self) -> None:
        auth = self.authenticator(issuer="https://idp.example")
        self.assertEqual(self.check(auth, bearer(TOKEN)).name, "alice")
        for iss in ("https://evil.example", None):
            self.idp.answers[OTHER.decode()] = active(iss=iss)
            self.refused(
                self.authenticator(issuer="https://idp.example"), bearer(OTHER), 401, "bad_issuer"
            )
        self.idp.answers[OTHER.decode()] = active(iss="https://evil.example")
        self.assertEqual(self.check(self.authenticator(), bearer(OTHER)).name, "alice")

    def test_audience_string_or_list(self) -> None:
        for aud in ("urn:api", ["urn:other", "urn:api"]):
            self.idp.answers[TOKEN.decode()] = active(aud=aud)
            self.check(self.authenticator(audience="urn:api"), bearer(TOKEN))
        for aud in ("urn:other", ["urn:other"], None, 7):
            self.idp.answers[TOKEN.decode()] = active(aud=aud)
            self.refused(self.authenticator(audience="urn:api"), bearer(TOKEN), 401, "bad_audience")

    def test_only_bearer_access_tokens(self) -> None:
        for token_type in ("Bearer", "bearer", "access_token", None):
            self.idp.answers[TOKEN.decode()] = active(token_type=token_type)
            self.check(self.authenticator(), bearer(TOKEN))
        for token_type in ("refresh_token", "DPoP", 1):
            self.idp.answers[TOKEN.decode()] = active(token_type=token_type)
            self.refused(self.authenticator(), bearer(TOKEN), 401, "bad_token_type")

    def test_route_scopes(self) -> None:
        auth = self.authenticator()
        self.check(auth, bearer(TOKEN), ("users:read",))
        e = self.refused(auth, bearer(TOKEN), 403, "insufficient_scope", ("users:read", "admin"))
        self.assertEqual(
            e.www_authenticate,
            'Bearer realm="avx-gateway", error="insufficient_scope", '
            'error_description="missing scope: admin", scope="users:read admin"',
        )

    def test_forward_claims(self) -> None:
        self.idp.answers[TOKEN.decode()] = active(tenant="acme\r\nX-Evil: 1", roles=["a", "b"])
        auth = self.authenticator(
            forward_claims=(
                ("sub", "X-User"),
                ("tenant", "X-Tenant"),
                ("roles", "X-Roles"),
                ("missing", "X-Missing"),
            )
        )
        self.assertEqual(
            auth.stripped_headers, frozenset({b"x-user", b"x-tenant", b"x-roles", b"x-missing"})
        )
        headers = auth.claim_headers(self.check(auth, bearer(TOKEN)))
        self.assertEqual(
            headers,
            [(b"X-User", b"alice"), (b"X-Tenant", b"acme  X-Evil: 1"), (b"X-Roles", b'["a","b"]')],
        )


class CacheTests(OAuth2TestCase):
    """Answers reused by the token's hash, for as long as allowed."""

    def test_active_answer_is_reused_for_cache_ttl(self) -> None:
        auth = self.authenticator(cache_ttl_s=30)
        self.check(auth, bearer(TOKEN))
        self.clock.advance(29)
        self.assertEqual(self.check(auth, bearer(TOKEN)).name, "alice")
        self.assertEqual(len(self.idp.calls), 1)
        self.assertEqual(self.sample("avx_oauth2_cache_hits_total", result="active"), 1)
        self.clock.advance(1)
        self.check(auth, bearer(TOKEN))
        self.assertEqual(len(self.idp.calls), 2)

    def test_revocation_is_seen_once_the_ttl_passes(self) -> None:
        auth = self.authenticator(cache_ttl_s=10)
        self.check(auth, bearer(TOKEN))
        self.idp.answers[TOKEN.decode()] = {"active": False}  # revoked at the provider
        self.check(auth, bearer(TOKEN))
        self.clock.advance(10)
        self.refused(auth, bearer(TOKEN), 401, "inactive")

    def test_never_reused_past_exp(self) -> None:
        self.idp.answers[TOKEN.decode()] = active(exp=NOW + 5)
        auth = self.authenticator(cache_ttl_s=60)
        self.check(auth, bearer(TOKEN))
        self.clock.advance(4)
        self.check(auth, bearer(TOKEN))
        self.assertEqual(len(self.idp.calls), 1)
        self.clock.advance(1)
        self.refused(auth, bearer(TOKEN), 401, "expired")
        self.assertEqual(len(self.idp.calls), 2)

    def test_cache_ttl_zero_asks_every_time(self) -> None:
        auth = self.authenticator(cache_ttl_s=0)
        for _ in range(3):
            self.check(auth, bearer(TOKEN))
        self.assertEqual(len(self.idp.calls), 3)
        self.assertEqual(self.sample("avx_oauth2_cache_hits_total", result="active"), 0)

    def test_refusals_are_reused_for_the_negative_ttl(self) -> None:
        auth = self.authenticator(negative_cache_ttl_s=5)
        self.refused(auth, bearer(OTHER), 401, "inactive")
        self.idp.answers[OTHER.decode()] = active()
        self.clock.advance(4)
        self.refused(auth, bearer(OTHER), 401, "inactive")
        self.assertEqual(len(self.idp.calls), 1)
        self.assertEqual(self.sample("avx_oauth2_cache_hits_total", result="inactive"), 1)
        self.clock.advance(1)
        self.check(auth, bearer(OTHER))
        self.assertEqual(len(self.idp.calls), 2)

    def test_negative_ttl_zero_does_not_cache_refusals(self) -> None:
        auth = self.authenticator(negative_cache_ttl_s=0)
        self.refused(auth, bearer(OTHER), 401, "inactive")
        self.refused(auth, bearer(OTHER), 401, "inactive")
        self.assertEqual(len(self.idp.calls), 2)

    def test_scopes_are_checked_on_cached_answers_per_route(self) -> None:
        auth = self.authenticator()
        self.check(auth, bearer(TOKEN), ("users:read",))
        self.refused(auth, bearer(TOKEN), 403, "insufficient_scope", ("admin",))
        self.assertEqual(len(self.idp.calls), 1)

    def test_keyed_by_hash_never_by_token(self) -> None:
        auth = self.authenticator()
        self.check(auth, bearer(TOKEN))
        self.refused(auth, bearer(OTHER), 401, "inactive")
        keys = list(auth._positive) + list(auth._negative)
        self.assertEqual(
            sorted(keys), sorted([hashlib.sha256(TOKEN).digest(), hashlib.sha256(OTHER).digest()])
        )

    def test_flood_of_refused_tokens_evicts_only_refusals(self) -> None:
        auth = self.authenticator()
        auth.max_cache_entries = 3
        self.check(auth, bearer(TOKEN))
        for i in range(10):
            self.refused(auth, bearer(b"made-up-%d" % i), 401, "inactive")
        self.assertEqual(len(auth._negative), 3)
        self.check(auth, bearer(TOKEN))
        self.assertEqual(len(self.idp.calls), 11)
        self.refused(auth, bearer(b"made-up-9"), 401, "inactive")
        self.refused(auth, bearer(b"made-up-0"), 401, "inactive")
        self.assertEqual(len(self.idp.calls), 12)

    def test_sweep_drops_expired_entries_and_stop_leaves_no_timers(self) -> None:
        auth = self.authenticator(cache_ttl_s=10, negative_cache_ttl_s=5)
        auth.start()
        auth.start()
        self.check(auth, bearer(TOKEN))
        self.refused(auth, bearer(OTHER), 401, "inactive")
        self.clock.advance(auth.sweep_interval_s)
        self.assertEqual((len(auth._positive), len(auth._negative)), (0, 0))
        auth.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class SingleFlightTests(OAuth2TestCase):
    """Concurrent checks of one token share one call."""

    def setUp(self) -> None:
        super().setUp()
        self.idp.hold = True

    def test_concurrent_checks_make_one_call(self) -> None:
        auth = self.authenticator()
        first = auth.check(bearer(TOKEN), FakeContext(), ())
        second = auth.check(bearer(TOKEN), FakeContext(), ("admin",))
        other = auth.check(bearer(OTHER), FakeContext(), ())
        self.assertEqual(len(self.idp.calls), 2)
        self.assertNoResult(first)
        self.idp.release()
        self.agent.flush()
        self.assertEqual(self.successResultOf(first).name, "alice")
        self.assertEqual(self.failureResultOf(second, AuthError).value.status, 403)
        self.assertEqual(self.failureResultOf(other, AuthError).value.reason, "inactive")
        self.assertEqual(self.sample("avx_oauth2_introspections_total", result="active"), 1)
        self.assertEqual(auth._inflight, {})

    def test_a_caller_going_away_does_not_cancel_the_call_for_others(self) -> None:
        auth = self.authenticator()
        first = auth.check(bearer(TOKEN), FakeContext(), ())
        second = auth.check(bearer(TOKEN), FakeContext(), ())
        first.cancel()  # type: ignore[union-attr]
        self.failureResultOf(first, CancelledError)
        self.idp.release()
        self.agent.flush()
        self.assertEqual(self.successResultOf(second).name, "alice")
        self.assertEqual(len(self.idp.calls), 1)
        # and the answer was cached for the next one
        self.assertEqual(self.check(auth, bearer(TOKEN)).name, "alice")
        self.assertEqual(len(self.idp.calls), 1)


class FailClosedTests(OAuth2TestCase):
    """The provider unreachable, slow or broken: 503 with Retry-After, and a breaker."""

    def setUp(self) -> None:
        super().setUp()
        self.logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def test_timeout_is_503_and_cancels_the_call(self) -> None:
        agent = HangingAgent()
        auth = self.authenticator(agent, timeout_ms=1500)
        d = auth.check(bearer(TOKEN), FakeContext(), ())
        self.clock.advance(1.4)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        e = self.failureResultOf(d, AuthError).value
        self.assertEqual((e.status, e.reason, e.retry_after_s), (503, "idp_unavailable", 1))
        self.assertIsNone(e.www_authenticate)
        self.assertEqual(agent.cancelled, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(
            self.sample("avx_idp_errors_total", kind="introspection", reason="timeout"), 1
        )
        self.assertEqual(self.sample("avx_oauth2_introspections_total", result="error"), 1)

    def test_connection_refused_is_503(self) -> None:
        auth = self.authenticator(RefusingAgent())
        self.refused(auth, bearer(TOKEN), 503, "idp_unavailable")
        self.assertEqual(
            self.sample("avx_idp_errors_total", kind="introspection", reason="connect"), 1
        )

    def test_unusable_answers_are_503(self) -> None:
        cases = [
            (500, None),
            (401, None),
            (200, b"<html>"),
            (200, b'{"sub": "alice"}'),
            (200, b"[true]"),
            (200, b'{"active": true, "pad": "' + b"x" * 300_000 + b'"}'),
        ]
        for code, raw in cases:
            self.idp.code, self.idp.raw = code, raw
            auth = self.authenticator()
            self.refused(auth, bearer(TOKEN), 503, "idp_unavailable")
        self.assertEqual(
            self.sample("avx_idp_errors_total", kind="introspection", reason="status"), 2
        )
        self.assertEqual(
            self.sample("avx_idp_errors_total", kind="introspection", reason="body"), 4
        )

    def test_failures_are_not_cached_and_never_pass(self) -> None:
        self.idp.code = 502
        auth = self.authenticator()
        self.refused(auth, bearer(TOKEN), 503, "idp_unavailable")
        self.idp.code = 200
        self.assertEqual(self.check(auth, bearer(TOKEN)).name, "alice")
        self.assertEqual(len(self.idp.calls), 2)

    def test_log_names_the_failure_never_the_token(self) -> None:
        self.idp.code = 500
        self.refused(self.authenticator(), bearer(TOKEN), 503, "idp_unavailable")
        text = " ".join(formatEvent(e) for e in self.logged)
        self.assertIn("HTTP status 500", text)
        self.assertNotIn(TOKEN.decode(), text)

    def test_breaker_opens_answers_at_once_then_tries_again(self) -> None:
        agent = RefusingAgent()
        auth = self.authenticator(agent)
        for i in range(IDP_BREAKER.failure_threshold):
            e = self.refused(auth, bearer(b"t%d" % i), 503, "idp_unavailable")
        self.assertEqual(e.retry_after_s, 5)  # the last failure opened it
        self.assertEqual(agent.calls, 5)
        self.clock.advance(2.5)
        e = self.refused(auth, bearer(TOKEN), 503, "idp_unavailable")
        self.assertEqual((e.retry_after_s, agent.calls), (3, 5))
        self.assertEqual(
            self.sample("avx_idp_errors_total", kind="introspection", reason="circuit_open"), 1
        )
        self.clock.advance(2.5)  # half-open: one trial call, which works
        auth._http = None
        auth._agent = self.agent
        self.assertEqual(self.check(auth, bearer(TOKEN)).name, "alice")
        self.refused(auth, bearer(OTHER), 401, "inactive")
        self.assertEqual(len(self.idp.calls), 2)

    def test_cached_tokens_keep_working_while_the_breaker_is_open(self) -> None:
        auth = self.authenticator()
        self.check(auth, bearer(TOKEN))
        auth._http = None
        auth._agent = RefusingAgent()
        for i in range(IDP_BREAKER.failure_threshold + 3):
            self.refused(auth, bearer(b"t%d" % i), 503, "idp_unavailable")
        self.assertEqual(self.check(auth, bearer(TOKEN)).name, "alice")


class FilterTests(OAuth2TestCase):
    """Through the route's auth filter: the answers a client sees."""

    def answer(self, flt: AuthFilter, request: FakeRequest) -> Any:
        ctx = FakeContext()
        result = flt(request, ctx)
        if isinstance(result, Deferred):
            result = self.successResultOf(result)
        return result, ctx

    def test_passes_and_sets_the_identity(self) -> None:
        flt = AuthFilter([self.authenticator()], ("users:read",), "r")
        result, ctx = self.answer(flt, bearer(TOKEN))
        self.assertIsNone(result)
        self.assertEqual(ctx.identity.name, "alice")

    def test_401_carries_the_invalid_token_challenge(self) -> None:
        flt = AuthFilter([self.authenticator()], (), "r")
        result, ctx = self.answer(flt, bearer(OTHER))
        self.assertEqual(result.status, 401)
        (challenge,) = [v for k, v in result.fields if k == b"WWW-Authenticate"]
        self.assertIn(b'error="invalid_token"', challenge)
        self.assertIsNone(ctx.identity)

    def test_503_carries_retry_after(self) -> None:
        flt = AuthFilter([self.authenticator(RefusingAgent())], (), "r")
        result, _ = self.answer(flt, bearer(TOKEN))
        self.assertEqual(result.status, 503)
        self.assertIn((b"Retry-After", b"1"), result.fields)

    def test_bound_token_needs_its_certificate(self) -> None:
        self.idp.answers[TOKEN.decode()] = active(cnf={"x5t#S256": "thumbprint"})
        flt = AuthFilter([self.authenticator()], (), "r")
        result, _ = self.answer(flt, bearer(TOKEN))
        self.assertEqual(result.status, 403)
