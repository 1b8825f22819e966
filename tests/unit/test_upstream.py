"""Tests for avx_twisted.upstream: target URL parsing, live state and picking."""

from __future__ import annotations

import random
from collections import Counter

from twisted.trial.unittest import SynchronousTestCase

from avx_twisted.balancing import LeastConnections, RandomChoice, RoundRobin, Weighted
from avx_twisted.upstream import Target, Upstream


class TargetParsingTests(SynchronousTestCase):
    """Target parses its URL into the parts the forwarder needs."""

    def test_http_with_explicit_port(self) -> None:
        t = Target("http://svc:8001")
        self.assertEqual(t.url, "http://svc:8001")
        self.assertEqual(t.scheme, b"http")
        self.assertEqual(t.host, "svc")
        self.assertEqual(t.port, 8001)
        self.assertEqual(t.base_path, b"")
        self.assertEqual(t.netloc, b"svc:8001")
        self.assertEqual(t.base_uri, b"http://svc:8001")

    def test_default_ports_are_filled_in_and_left_out_of_netloc(self) -> None:
        http, https = Target("http://svc"), Target("https://svc")
        self.assertEqual((http.port, http.netloc), (80, b"svc"))
        self.assertEqual((https.port, https.netloc), (443, b"svc"))
        self.assertEqual(https.base_uri, b"https://svc")

    def test_explicit_default_port_is_left_out_of_netloc(self) -> None:
        self.assertEqual(Target("http://svc:80").netloc, b"svc")
        self.assertEqual(Target("https://svc:443").netloc, b"svc")

    def test_non_default_port_for_the_scheme_is_kept(self) -> None:
        self.assertEqual(Target("https://svc:80").netloc, b"svc:80")

    def test_scheme_and_host_are_case_insensitive(self) -> None:
        t = Target("HTTPS://Svc.Example")
        self.assertEqual((t.scheme, t.host), (b"https", "svc.example"))

    def test_ipv6_host_is_unbracketed_but_netloc_is_bracketed(self) -> None:
        t = Target("http://[::1]:8080/api")
        self.assertEqual(t.host, "::1")
        self.assertEqual(t.port, 8080)
        self.assertEqual(t.netloc, b"[::1]:8080")
        self.assertEqual(t.base_uri, b"http://[::1]:8080/api")

    def test_ipv6_with_default_port(self) -> None:
        t = Target("https://[2001:db8::2]")
        self.assertEqual((t.host, t.port, t.netloc), ("2001:db8::2", 443, b"[2001:db8::2]"))

    def test_base_path_drops_trailing_slash(self) -> None:
        t = Target("https://svc/base/")
        self.assertEqual(t.base_path, b"/base")
        self.assertEqual(t.base_uri, b"https://svc/base")

    def test_nested_base_path(self) -> None:
        self.assertEqual(Target("http://svc:81/a/b").base_uri, b"http://svc:81/a/b")

    def test_root_path_is_no_base_path(self) -> None:
        self.assertEqual(Target("http://svc/").base_path, b"")

    def test_base_path_keeps_percent_escapes_and_encodes_non_ascii(self) -> None:
        self.assertEqual(Target("http://svc/a%20b").base_path, b"/a%20b")
        self.assertEqual(Target("http://svc/caf\u00e9").base_path, b"/caf%C3%A9")

    def test_initial_state(self) -> None:
        t = Target("http://svc", weight=3)
        self.assertEqual(t.weight, 3)
        self.assertEqual(t.in_flight, 0)
        self.assertTrue(t.healthy)
        self.assertTrue(t.available)

    def test_unhealthy_target_is_unavailable(self) -> None:
        t = Target("http://svc")
        t.healthy = False
        self.assertFalse(t.available)


class TargetRejectionTests(SynchronousTestCase):
    """Target rejects URLs it cannot forward to, with a short specific message."""

    def assertRejected(self, url: str, message: str) -> None:
        e = self.assertRaises(ValueError, Target, url)
        self.assertIn(message, str(e))

    def test_rejects_other_schemes(self) -> None:
        self.assertRejected("ftp://svc", "scheme 'ftp' is not http or https")

    def test_rejects_missing_scheme(self) -> None:
        self.assertRejected("//svc:8001", "missing scheme")

    def test_rejects_missing_host(self) -> None:
        self.assertRejected("http:///path", "missing host")
        self.assertRejected("http://:8001", "missing host")

    def test_rejects_query(self) -> None:
        self.assertRejected("http://svc/?a=1", "query string")
        self.assertRejected("http://svc?", "query string")

    def test_rejects_fragment(self) -> None:
        self.assertRejected("http://svc/#top", "fragment")

    def test_rejects_userinfo(self) -> None:
        self.assertRejected("http://user:secret@svc", "userinfo")
        self.assertRejected("http://user@svc", "userinfo")

    def test_rejects_bad_ports(self) -> None:
        for url in ("http://svc:0", "http://svc:65536", "http://svc:http", "http://svc:-1"):
            self.assertRejected(url, "invalid port")

    def test_rejects_whitespace(self) -> None:
        self.assertRejected("http://sv c", "whitespace")
        self.assertRejected("http://svc/\n", "whitespace")

    def test_rejects_malformed_ipv6(self) -> None:
        self.assertRejected("http://[::1", "malformed URL")

    def test_rejects_non_ascii_host(self) -> None:
        self.assertRejected("http://b\u00fccher.example", "punycode")

    def test_rejects_non_positive_weight(self) -> None:
        for weight in (0, -1):
            e = self.assertRaises(ValueError, Target, "http://svc", weight)
            self.assertIn("not a positive integer", str(e))


class TargetInFlightTests(SynchronousTestCase):
    """acquire/release count the requests in flight."""

    def test_acquire_and_release(self) -> None:
        t = Target("http://svc")
        t.acquire()
        t.acquire()
        self.assertEqual(t.in_flight, 2)
        t.release()
        self.assertEqual(t.in_flight, 1)

    def test_release_never_goes_below_zero(self) -> None:
        t = Target("http://svc")
        t.release()
        self.assertEqual(t.in_flight, 0)
        t.acquire()
        t.release()
        t.release()
        self.assertEqual(t.in_flight, 0)


class UpstreamPickTests(SynchronousTestCase):
    """Upstream.pick only offers available, non-excluded targets to the balancer."""

    def setUp(self) -> None:
        self.a, self.b, self.c = (Target(f"http://{n}") for n in "abc")
        self.upstream = Upstream([self.a, self.b, self.c], RoundRobin())

    def picks(self, count: int, exclude: tuple[Target, ...] = ()) -> list[str | None]:
        """Host names of `count` successive picks."""
        result = []
        for _ in range(count):
            target = self.upstream.pick(exclude)
            result.append(target.host if target is not None else None)
        return result

    def test_targets_are_kept_as_a_tuple(self) -> None:
        self.assertEqual(self.upstream.targets, (self.a, self.b, self.c))

    def test_picks_all_targets_when_all_available(self) -> None:
        self.assertEqual(self.picks(6), list("abcabc"))

    def test_skips_unavailable_targets(self) -> None:
        self.b.healthy = False
        self.assertEqual(self.picks(4), list("acac"))

    def test_skips_excluded_targets(self) -> None:
        self.assertEqual(self.picks(4, exclude=(self.a,)), list("bcbc"))

    def test_accepts_a_set_as_exclude(self) -> None:
        self.assertIs(self.upstream.pick({self.a, self.b}), self.c)

    def test_skips_both_excluded_and_unavailable(self) -> None:
        self.c.healthy = False
        self.assertEqual(self.picks(3, exclude=(self.a,)), list("bbb"))

    def test_returns_none_when_none_left(self) -> None:
        self.a.healthy = False
        self.b.healthy = False
        self.assertIsNone(self.upstream.pick([self.c]))

    def test_returns_none_when_all_unavailable(self) -> None:
        for target in self.upstream.targets:
            target.healthy = False
        self.assertIsNone(self.upstream.pick())

    def test_recovered_target_is_picked_again(self) -> None:
        self.b.healthy = False
        self.assertEqual(self.picks(2), list("ac"))
        self.b.healthy = True
        self.assertEqual(Counter(self.picks(30)), {"a": 10, "b": 10, "c": 10})

    def test_fast_path_hands_the_targets_tuple_to_the_balancer(self) -> None:
        seen = []

        class Recording:
            def pick(self, candidates):
                seen.append(candidates)
                return candidates[0] if candidates else None

        upstream = Upstream([self.a, self.b], Recording())
        upstream.pick()
        upstream.pick([self.a])
        self.assertIs(seen[0], upstream.targets)
        self.assertEqual(list(seen[1]), [self.b])

    def test_rejects_no_targets(self) -> None:
        self.assertRaises(ValueError, Upstream, [], RoundRobin())


class UpstreamFromUrlsTests(SynchronousTestCase):
    """Upstream.from_urls builds targets and the named balancer."""

    def test_defaults_to_round_robin_with_weight_one(self) -> None:
        upstream = Upstream.from_urls(["http://a", "http://b:81"])
        self.assertIsInstance(upstream.balancer, RoundRobin)
        self.assertEqual([t.url for t in upstream.targets], ["http://a", "http://b:81"])
        self.assertEqual([t.weight for t in upstream.targets], [1, 1])

    def test_weights_are_applied_in_order(self) -> None:
        upstream = Upstream.from_urls(["http://a", "http://b"], "weighted", weights=[3, 1])
        self.assertIsInstance(upstream.balancer, Weighted)
        self.assertEqual([t.weight for t in upstream.targets], [3, 1])
        picks = [upstream.pick().host for _ in range(4)]
        self.assertEqual(picks, list("aaba"))

    def test_weights_must_match_urls(self) -> None:
        e = self.assertRaises(
            ValueError, Upstream.from_urls, ["http://a", "http://b"], "weighted", [1]
        )
        self.assertIn("1 weights given for 2 targets", str(e))

    def test_random_uses_the_injected_rng(self) -> None:
        urls = ["http://a", "http://b", "http://c"]
        first = Upstream.from_urls(urls, "random", rng=random.Random(3))
        second = Upstream.from_urls(urls, "random", rng=random.Random(3))
        self.assertIsInstance(first.balancer, RandomChoice)
        self.assertEqual(
            [first.pick().host for _ in range(30)], [second.pick().host for _ in range(30)]
        )

    def test_least_connections(self) -> None:
        upstream = Upstream.from_urls(["http://a", "http://b"], "least_connections")
        self.assertIsInstance(upstream.balancer, LeastConnections)
        upstream.targets[0].acquire()
        self.assertEqual(upstream.pick().host, "b")

    def test_bad_url_or_strategy_raises(self) -> None:
        self.assertRaises(ValueError, Upstream.from_urls, ["ftp://a"])
        self.assertRaises(ValueError, Upstream.from_urls, ["http://a"], "fastest")
