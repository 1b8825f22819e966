"""Tests for the CORS policy in avx_twisted.cors."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from avx_twisted.config import CorsConfig
from avx_twisted.cors import CorsPolicy
from avx_twisted.h1 import Fields

APP = "https://app.example.com"
VARY_PREFLIGHT = (b"Vary", b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers")
VARY_ORIGIN = (b"Vary", b"Origin")


def policy(**kwargs: object) -> CorsPolicy:
    """A CorsPolicy allowing APP unless told otherwise."""
    kwargs.setdefault("allowed_origins", (APP,))
    return CorsPolicy(CorsConfig(**kwargs))  # type: ignore[arg-type]


def headers(**fields: str) -> Fields:
    """Request headers from keyword arguments (``request_method`` -> ``Request-Method``)."""
    h = Fields()
    for name, value in fields.items():
        h.add(name.replace("_", "-").encode(), value.encode())
    return h


def preflight_headers(
    origin: str = APP, method: str = "PUT", request_headers: str | None = None
) -> Fields:
    """The headers of a browser preflight."""
    h = headers(origin=origin, access_control_request_method=method)
    if request_headers is not None:
        h.add(b"Access-Control-Request-Headers", request_headers.encode())
    return h


def cors_names(answer: list[tuple[bytes, bytes]]) -> list[bytes]:
    """The Access-Control-* header names in an answer."""
    return [name for name, _ in answer if name.lower().startswith(b"access-control-")]


class PreflightTests(SynchronousTestCase):
    """CorsPolicy.preflight."""

    def test_allowed_preflight_gets_every_header(self) -> None:
        p = policy(
            allowed_methods=("GET", "PUT"),
            allowed_headers=("Authorization", "Content-Type", "X-Trace"),
            allow_credentials=True,
            max_age_s=300,
        )
        status, answer = p.preflight(preflight_headers(request_headers="authorization, x-trace"))
        self.assertEqual(status, 204)
        self.assertEqual(
            answer,
            [
                (b"Access-Control-Allow-Origin", APP.encode()),
                (b"Access-Control-Allow-Methods", b"GET, PUT"),
                (
                    b"Access-Control-Allow-Headers",
                    b"Authorization, Content-Type, X-Trace, Accept, Accept-Language, "
                    b"Content-Language",
                ),
                (b"Access-Control-Allow-Credentials", b"true"),
                (b"Access-Control-Max-Age", b"300"),
                VARY_PREFLIGHT,
            ],
        )

    def test_preflight_without_credentials_has_no_credentials_header(self) -> None:
        _, answer = policy().preflight(preflight_headers())
        self.assertNotIn(b"Access-Control-Allow-Credentials", cors_names(answer))
        self.assertIn((b"Access-Control-Max-Age", b"600"), answer)

    def test_disallowed_origin_gets_no_cors_headers(self) -> None:
        status, answer = policy().preflight(preflight_headers(origin="https://evil.example"))
        self.assertEqual((status, answer), (204, [VARY_PREFLIGHT]))

    def test_disallowed_method_gets_no_cors_headers(self) -> None:
        p = policy(allowed_methods=("GET", "POST"))
        self.assertEqual(p.preflight(preflight_headers(method="DELETE")), (204, [VARY_PREFLIGHT]))

    def test_method_compares_exactly(self) -> None:
        """Browsers send non-standard methods as written and compare them byte for byte."""
        p = policy(allowed_methods=("PATCH",))
        self.assertEqual(p.preflight(preflight_headers(method="patch")), (204, [VARY_PREFLIGHT]))

    def test_disallowed_header_gets_no_cors_headers(self) -> None:
        p = policy(allowed_headers=("Authorization",))
        answer = p.preflight(preflight_headers(request_headers="authorization, x-secret"))
        self.assertEqual(answer, (204, [VARY_PREFLIGHT]))

    def test_safelisted_request_headers_are_always_allowed(self) -> None:
        p = policy(allowed_headers=())
        _, answer = p.preflight(
            preflight_headers(
                request_headers="accept, accept-language, content-language, content-type"
            )
        )
        self.assertIn(
            (
                b"Access-Control-Allow-Headers",
                b"Accept, Accept-Language, Content-Language, Content-Type",
            ),
            answer,
        )

    def test_request_headers_match_case_insensitively(self) -> None:
        p = policy(allowed_headers=("X-Request-ID", "authorization"))
        _, answer = p.preflight(
            preflight_headers(request_headers="X-REQUEST-ID,Authorization , x-request-id")
        )
        self.assertIn(b"Access-Control-Allow-Origin", cors_names(answer))

    def test_request_headers_over_several_lines(self) -> None:
        p = policy(allowed_headers=("X-A",))
        h = preflight_headers(request_headers="x-a")
        h.add(b"Access-Control-Request-Headers", b"x-b")
        self.assertEqual(p.preflight(h), (204, [VARY_PREFLIGHT]))

    def test_origin_compares_case_insensitively(self) -> None:
        p = policy(allowed_origins=("HTTPS://App.Example.COM",))
        _, answer = p.preflight(preflight_headers(origin=APP))
        self.assertEqual(answer[0], (b"Access-Control-Allow-Origin", APP.encode()))

    def test_origin_must_match_port_and_scheme(self) -> None:
        p = policy(allowed_origins=("https://app.example.com:8443",))
        for origin in (APP, "http://app.example.com:8443", "https://app.example.com:8444"):
            self.assertEqual(
                p.preflight(preflight_headers(origin=origin)), (204, [VARY_PREFLIGHT]), origin
            )
        _, answer = p.preflight(preflight_headers(origin="https://app.example.com:8443"))
        self.assertIn((b"Access-Control-Allow-Origin", b"https://app.example.com:8443"), answer)

    def test_configured_default_port_matches_browser_origin(self) -> None:
        """Browsers omit the default port when serializing an origin."""
        p = policy(allowed_origins=("https://app.example.com:443",))
        _, answer = p.preflight(preflight_headers())
        self.assertEqual(answer[0], (b"Access-Control-Allow-Origin", APP.encode()))

    def test_subdomain_and_suffix_are_not_the_origin(self) -> None:
        p = policy()
        for origin in ("https://evil.app.example.com", "https://app.example.com.evil", APP + "/"):
            self.assertEqual(p.preflight(preflight_headers(origin=origin)), (204, [VARY_PREFLIGHT]))

    def test_several_origin_headers_are_refused(self) -> None:
        h = preflight_headers()
        h.add(b"Origin", APP.encode())
        self.assertEqual(policy().preflight(h), (204, [VARY_PREFLIGHT]))

    def test_wildcard_methods_and_headers_name_the_requested_ones(self) -> None:
        p = policy(allowed_methods=("*",), allowed_headers=("*",))
        _, answer = p.preflight(
            preflight_headers(method="PURGE", request_headers="Authorization, X-Any")
        )
        self.assertIn((b"Access-Control-Allow-Methods", b"PURGE"), answer)
        self.assertIn((b"Access-Control-Allow-Headers", b"authorization, x-any"), answer)


class WildcardAndNullTests(SynchronousTestCase):
    """The ``"*"`` and ``null`` origins."""

    def test_wildcard_answers_star(self) -> None:
        p = policy(allowed_origins=("*",))
        _, answer = p.preflight(preflight_headers(origin="https://anyone.example"))
        self.assertEqual(answer[0], (b"Access-Control-Allow-Origin", b"*"))
        self.assertEqual(
            p.response_headers(headers(origin="https://anyone.example")),
            [(b"Access-Control-Allow-Origin", b"*"), VARY_ORIGIN],
        )

    def test_listed_origin_is_echoed_even_with_wildcard(self) -> None:
        p = policy(allowed_origins=("*", APP))
        self.assertEqual(
            p.response_headers(headers(origin=APP))[0],
            (b"Access-Control-Allow-Origin", APP.encode()),
        )

    def test_wildcard_is_never_used_with_credentials(self) -> None:
        """Config validation refuses this; a directly built config must not reflect everyone."""
        p = policy(allowed_origins=("*", APP), allow_credentials=True)
        other = "https://anyone.example"
        self.assertEqual(p.preflight(preflight_headers(origin=other)), (204, [VARY_PREFLIGHT]))
        self.assertEqual(p.response_headers(headers(origin=other)), [VARY_ORIGIN])
        allowed = p.response_headers(headers(origin=APP))
        self.assertEqual(allowed[0], (b"Access-Control-Allow-Origin", APP.encode()))
        self.assertNotIn((b"Access-Control-Allow-Origin", b"*"), allowed)

    def test_null_origin_is_refused_even_if_listed(self) -> None:
        p = policy(allowed_origins=("null", APP))
        self.assertEqual(p.preflight(preflight_headers(origin="null")), (204, [VARY_PREFLIGHT]))
        self.assertEqual(p.response_headers(headers(origin="null")), [VARY_ORIGIN])

    def test_null_origin_is_refused_by_wildcard(self) -> None:
        p = policy(allowed_origins=("*",))
        self.assertEqual(p.preflight(preflight_headers(origin="null")), (204, [VARY_PREFLIGHT]))
        self.assertEqual(p.response_headers(headers(origin="null")), [VARY_ORIGIN])


class ResponseHeadersTests(SynchronousTestCase):
    """CorsPolicy.response_headers, for actual requests."""

    def test_allowed_origin_is_echoed_with_credentials_and_expose_headers(self) -> None:
        p = policy(
            allowed_origins=(APP, "https://other.example"),
            allow_credentials=True,
            expose_headers=("X-Request-ID", "ETag"),
        )
        self.assertEqual(
            p.response_headers(headers(origin=APP)),
            [
                (b"Access-Control-Allow-Origin", APP.encode()),
                (b"Access-Control-Allow-Credentials", b"true"),
                (b"Access-Control-Expose-Headers", b"X-Request-ID, ETag"),
                VARY_ORIGIN,
            ],
        )

    def test_allowed_origin_without_extras(self) -> None:
        self.assertEqual(
            policy().response_headers(headers(origin=APP)),
            [(b"Access-Control-Allow-Origin", APP.encode()), VARY_ORIGIN],
        )

    def test_disallowed_origin_gets_only_vary(self) -> None:
        p = policy(allow_credentials=True, expose_headers=("X-Request-ID",))
        self.assertEqual(p.response_headers(headers(origin="https://evil.example")), [VARY_ORIGIN])

    def test_no_origin_gets_only_vary(self) -> None:
        self.assertEqual(policy().response_headers(Fields()), [VARY_ORIGIN])

    def test_policy_allowing_nothing_adds_nothing(self) -> None:
        self.assertEqual(policy(allowed_origins=()).response_headers(headers(origin=APP)), [])

    def test_answer_is_a_fresh_list(self) -> None:
        p = policy()
        p.response_headers(headers(origin=APP)).append((b"X", b"y"))
        self.assertEqual(len(p.response_headers(headers(origin=APP))), 2)


class IsPreflightTests(SynchronousTestCase):
    """CorsPolicy.is_preflight."""

    def test_truth_table(self) -> None:
        p = policy()
        cases = [
            (b"OPTIONS", {"origin": APP, "access_control_request_method": "PUT"}, True),
            (
                b"OPTIONS",
                {"origin": "https://evil.example", "access_control_request_method": "PUT"},
                True,
            ),
            (b"OPTIONS", {"origin": APP}, False),
            (b"OPTIONS", {"access_control_request_method": "PUT"}, False),
            (b"OPTIONS", {}, False),
            (b"GET", {"origin": APP, "access_control_request_method": "PUT"}, False),
            (b"options", {"origin": APP, "access_control_request_method": "PUT"}, False),
        ]
        for method, fields, expected in cases:
            self.assertIs(p.is_preflight(method, headers(**fields)), expected, (method, fields))
