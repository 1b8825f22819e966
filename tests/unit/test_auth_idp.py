"""Tests for avx_twisted.auth._idp: cache lifetimes from headers, failure reasons, IdP URLs."""

from __future__ import annotations

from twisted.internet.defer import TimeoutError
from twisted.internet.error import ConnectionRefusedError, DNSLookupError
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from avx_twisted.auth._idp import IdPError, failure_reason, freshness_s, url_problem


def lifetime(**headers: str) -> float:
    raw = Headers({name.replace("_", "-").encode(): [v.encode()] for name, v in headers.items()})
    return freshness_s(raw, default=300.0, minimum=60.0, maximum=86400.0)


class FreshnessTests(SynchronousTestCase):
    def test_table(self) -> None:
        date = "Tue, 01 Dec 2026 14:00:00 GMT"
        cases = [
            ({}, 300.0),
            ({"cache_control": "max-age=3600"}, 3600.0),
            ({"cache_control": "public, max-age=3600, must-revalidate"}, 3600.0),
            ({"cache_control": 'max-age="120"'}, 120.0),
            ({"cache_control": "MAX-AGE=120"}, 120.0),
            ({"cache_control": "max-age=3600", "age": "600"}, 3000.0),
            ({"cache_control": "max-age=10"}, 60.0),
            ({"cache_control": "max-age=99999999"}, 86400.0),
            ({"cache_control": "s-maxage=3600"}, 300.0),
            ({"cache_control": "no-store"}, 60.0),
            ({"cache_control": "private, no-cache"}, 60.0),
            ({"cache_control": "max-age=bogus"}, 300.0),
            ({"expires": "Tue, 01 Dec 2026 15:00:00 GMT", "date": date}, 3600.0),
            ({"expires": "Tue, 01 Dec 2026 15:00:00 GMT"}, 300.0),
            ({"expires": "0", "date": date}, 300.0),
            (
                {
                    "cache_control": "max-age=120",
                    "expires": "Wed, 02 Dec 2026 14:00:00 GMT",
                    "date": date,
                },
                120.0,
            ),
        ]
        for headers, expected in cases:
            self.assertEqual(lifetime(**headers), expected, headers)


class FailureReasonTests(SynchronousTestCase):
    def test_table(self) -> None:
        cases = [
            (IdPError("status", "HTTP status 500"), "status"),
            (IdPError("body", "not JSON"), "body"),
            (TimeoutError(), "timeout"),
            (ConnectionRefusedError(), "connect"),
            (DNSLookupError(), "connect"),
        ]
        for error, reason in cases:
            self.assertEqual(failure_reason(Failure(error)), reason)


class UrlTests(SynchronousTestCase):
    def test_https_anywhere_plain_http_only_to_loopback(self) -> None:
        for url in (
            "https://idp.example/x",
            "http://127.0.0.1:8/x",
            "http://127.9.9.9/",
            "http://[::1]:80/",
            "http://localhost/",
        ):
            self.assertIsNone(url_problem(url), url)
        for url in (
            "http://idp.example/x",
            "http://10.0.0.1/",
            "http://[::ffff:10.0.0.1]/",
            "ftp://idp.example/",
            "idp.example",
            "https:///path",
            "http://[::1/",
        ):
            self.assertIsNotNone(url_problem(url), url)
