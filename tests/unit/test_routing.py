"""Tests for request routing in avx_twisted.routing."""

from __future__ import annotations

from typing import Optional

from twisted.trial.unittest import SynchronousTestCase

from avx_twisted.routing import (
    BadPath,
    MethodNotAllowed,
    PatternError,
    RouteMatch,
    RouteRule,
    RouteTable,
    parse_pattern,
)


def table(*rules: RouteRule) -> RouteTable:
    """A RouteTable over the given rules."""
    return RouteTable(rules)


def rule(pattern: str, value: object = None, **kwargs: object) -> RouteRule:
    """A RouteRule whose value defaults to its pattern (handy for asserting which matched)."""
    return RouteRule(pattern, pattern if value is None else value, **kwargs)  # type: ignore[arg-type]


class RoutingTestCase(SynchronousTestCase):
    """Helpers shared by the routing tests."""

    def route(
        self, t: RouteTable, target: bytes, method: bytes = b"GET", host: Optional[bytes] = None
    ) -> RouteMatch:
        """Match and assert the result is a RouteMatch."""
        result = t.match(host, target, method)
        self.assertIsInstance(result, RouteMatch)
        assert isinstance(result, RouteMatch)
        return result

    def value(
        self, t: RouteTable, target: bytes, method: bytes = b"GET", host: Optional[bytes] = None
    ) -> object:
        """The value of the matched rule, or None for no match."""
        result = t.match(host, target, method)
        return result.value if isinstance(result, RouteMatch) else result

    def assertBadPath(self, t: RouteTable, target: bytes) -> None:
        """Matching ``target`` raises BadPath (the failure names the target)."""
        try:
            t.match(None, target, b"GET")
        except BadPath:
            return
        self.fail(f"{target!r} did not raise BadPath")

    def upstream(self, t: RouteTable, target: bytes) -> bytes:
        """The upstream target for a GET of ``target``."""
        return self.route(t, target).upstream_target


class PathMatchingTests(RoutingTestCase):
    """Exact, wildcard and param patterns against request paths."""

    def test_exact_pattern_matches_same_path(self) -> None:
        self.assertEqual(self.value(table(rule("/a/b")), b"/a/b"), "/a/b")

    def test_exact_pattern_does_not_match_other_path(self) -> None:
        self.assertIsNone(self.value(table(rule("/a/b")), b"/a/c"))

    def test_exact_pattern_does_not_match_trailing_slash(self) -> None:
        self.assertIsNone(self.value(table(rule("/a/b")), b"/a/b/"))

    def test_exact_pattern_does_not_match_longer_path(self) -> None:
        self.assertIsNone(self.value(table(rule("/a/b")), b"/a/b/c"))

    def test_exact_root_matches_only_root(self) -> None:
        t = table(rule("/"))
        self.assertEqual(self.value(t, b"/"), "/")
        self.assertIsNone(self.value(t, b"/a"))

    def test_matching_is_case_sensitive(self) -> None:
        self.assertIsNone(self.value(table(rule("/a/b")), b"/A/b"))

    def test_wildcard_matches_prefix_without_slash(self) -> None:
        self.assertEqual(self.value(table(rule("/a/*")), b"/a"), "/a/*")

    def test_wildcard_matches_prefix_with_trailing_slash(self) -> None:
        self.assertEqual(self.value(table(rule("/a/*")), b"/a/"), "/a/*")

    def test_wildcard_matches_deeper_paths(self) -> None:
        self.assertEqual(self.value(table(rule("/a/*")), b"/a/x/y"), "/a/*")

    def test_wildcard_does_not_match_longer_segment(self) -> None:
        self.assertIsNone(self.value(table(rule("/a/*")), b"/ab"))

    def test_catch_all_matches_everything(self) -> None:
        t = table(rule("/*"))
        for target in (b"/", b"/a", b"/a/b/", b"//x"):
            self.assertEqual(self.value(t, target), "/*", target)

    def test_param_captures_segment(self) -> None:
        match = self.route(table(rule("/users/{id}/posts")), b"/users/42/posts")
        self.assertEqual(match.params, {"id": "42"})

    def test_param_does_not_match_empty_segment(self) -> None:
        self.assertIsNone(self.value(table(rule("/users/{id}")), b"/users/"))

    def test_param_matches_exactly_one_segment(self) -> None:
        self.assertIsNone(self.value(table(rule("/users/{id}")), b"/users/1/2"))

    def test_param_captures_match_form(self) -> None:
        match = self.route(table(rule("/u/{id}")), b"/u/%41b%2Fc%20")
        self.assertEqual(match.params, {"id": "Ab%2Fc%20"})

    def test_param_with_wildcard_tail(self) -> None:
        match = self.route(table(rule("/a/{id}/*")), b"/a/7/x/y")
        self.assertEqual(match.params, {"id": "7"})

    def test_wildcard_with_leading_param_checks_later_literal(self) -> None:
        t = table(rule("/{tenant}/api/*"))
        self.assertEqual(self.route(t, b"/t1/api/x").params, {"tenant": "t1"})
        self.assertIsNone(self.value(t, b"/t1/web/x"))

    def test_several_params_are_captured(self) -> None:
        match = self.route(table(rule("/{org}/repos/{repo}")), b"/acme/repos/gw")
        self.assertEqual(match.params, {"org": "acme", "repo": "gw"})

    def test_no_rules_returns_none(self) -> None:
        self.assertIsNone(self.value(table(), b"/"))

    def test_query_does_not_affect_matching(self) -> None:
        self.assertEqual(self.value(table(rule("/a")), b"/a?x=/b"), "/a")

    def test_percent_encoded_pattern_literal_matches_decoded_form(self) -> None:
        self.assertEqual(self.value(table(rule("/%61dmin")), b"/admin"), "/%61dmin")


class PrecedenceTests(RoutingTestCase):
    """The most specific rule wins; config order breaks ties."""

    def test_exact_beats_param_and_wildcard(self) -> None:
        t = table(rule("/a/*"), rule("/a/{id}"), rule("/a/b"))
        self.assertEqual(self.value(t, b"/a/b"), "/a/b")

    def test_param_beats_wildcard(self) -> None:
        t = table(rule("/a/*"), rule("/a/{id}"))
        self.assertEqual(self.value(t, b"/a/b"), "/a/{id}")

    def test_param_with_more_literals_wins(self) -> None:
        t = table(rule("/{x}/{y}"), rule("/a/{y}"))
        self.assertEqual(self.value(t, b"/a/b"), "/a/{y}")

    def test_longer_wildcard_beats_shorter(self) -> None:
        t = table(rule("/*"), rule("/a/*"), rule("/a/b/*"))
        self.assertEqual(self.value(t, b"/a/b/c"), "/a/b/*")
        self.assertEqual(self.value(t, b"/a/c"), "/a/*")
        self.assertEqual(self.value(t, b"/c"), "/*")

    def test_literal_beats_param_in_wildcard_prefix(self) -> None:
        t = table(rule("/a/{id}/*"), rule("/a/b/*"))
        self.assertEqual(self.value(t, b"/a/b/c"), "/a/b/*")

    def test_config_order_breaks_ties(self) -> None:
        t = table(rule("/a/{x}", "first"), rule("/a/{y}", "second"))
        self.assertEqual(self.value(t, b"/a/b"), "first")

    def test_config_order_breaks_ties_for_identical_exact_patterns(self) -> None:
        t = table(rule("/a", "first"), rule("/a", "second"))
        self.assertEqual(self.value(t, b"/a"), "first")


class HostTests(RoutingTestCase):
    """Host-specific rules, normalisation and fallback to host-less rules."""

    def setUp(self) -> None:
        self.table = table(
            rule("/*", "any"),
            rule("/*", "api", host="api.example.com"),
            rule("/*", "sub", host="*.example.com"),
            rule("/*", "v6", host="[::1]"),
        )

    def test_host_rule_matches_its_host(self) -> None:
        self.assertEqual(self.value(self.table, b"/", host=b"api.example.com"), "api")

    def test_host_match_ignores_port(self) -> None:
        self.assertEqual(self.value(self.table, b"/", host=b"api.example.com:8080"), "api")

    def test_host_match_ignores_case(self) -> None:
        self.assertEqual(self.value(self.table, b"/", host=b"API.Example.COM"), "api")

    def test_host_match_ignores_trailing_dot(self) -> None:
        self.assertEqual(self.value(self.table, b"/", host=b"api.example.com.:80"), "api")

    def test_ipv6_host_with_port(self) -> None:
        self.assertEqual(self.value(self.table, b"/", host=b"[::1]:8080"), "v6")

    def test_wildcard_host_matches_subdomain(self) -> None:
        self.assertEqual(self.value(self.table, b"/", host=b"www.example.com"), "sub")

    def test_wildcard_host_matches_nested_subdomain(self) -> None:
        self.assertEqual(self.value(self.table, b"/", host=b"a.b.example.com"), "sub")

    def test_wildcard_host_does_not_match_apex(self) -> None:
        self.assertEqual(self.value(self.table, b"/", host=b"example.com"), "any")

    def test_literal_wildcard_host_header_does_not_match_wildcard_rule(self) -> None:
        self.assertEqual(self.value(self.table, b"/", host=b"*.example.com"), "any")

    def test_unknown_host_falls_back_to_hostless_rule(self) -> None:
        self.assertEqual(self.value(self.table, b"/", host=b"other.org"), "any")

    def test_missing_host_falls_back_to_hostless_rule(self) -> None:
        self.assertEqual(self.value(self.table, b"/", host=None), "any")

    def test_host_rule_does_not_match_other_host(self) -> None:
        t = table(rule("/a", host="api.example.com"))
        self.assertIsNone(self.value(t, b"/a", host=b"web.example.com"))

    def test_host_rule_beats_more_specific_hostless_rule(self) -> None:
        t = table(rule("/a/b", "hostless"), rule("/*", "host", host="h.test"))
        self.assertEqual(self.value(t, b"/a/b", host=b"h.test"), "host")

    def test_exact_host_and_wildcard_host_share_precedence(self) -> None:
        t = table(rule("/*", "exact-host", host="a.test"), rule("/x", "wild-host", host="*.test"))
        self.assertEqual(self.value(t, b"/x", host=b"a.test"), "wild-host")
        self.assertEqual(self.value(t, b"/y", host=b"a.test"), "exact-host")

    def test_rule_host_is_normalised(self) -> None:
        t = table(rule("/", "h", host="Example.COM."))
        self.assertEqual(self.value(t, b"/", host=b"example.com"), "h")

    def test_bad_host_wildcard_is_rejected(self) -> None:
        with self.assertRaises(PatternError):
            table(rule("/", host="api.*.example.com"))


class MethodTests(RoutingTestCase):
    """Method filtering and 405 answers."""

    def test_rule_without_methods_allows_any_method(self) -> None:
        self.assertEqual(self.value(table(rule("/a")), b"/a", b"PURGE"), "/a")

    def test_first_rule_allowing_method_wins(self) -> None:
        t = table(rule("/a", "get", methods=frozenset({"GET"})), rule("/a/*", "wild"))
        self.assertEqual(self.value(t, b"/a", b"POST"), "wild")

    def test_disallowed_method_returns_allowed_union(self) -> None:
        t = table(
            rule("/a", methods=frozenset({"POST"})),
            rule("/a/*", methods=frozenset({"GET", "DELETE"})),
            rule("/b", methods=frozenset({"PUT"})),
        )
        self.assertEqual(
            t.match(None, b"/a", b"PATCH"), MethodNotAllowed(("DELETE", "GET", "HEAD", "POST"))
        )

    def test_head_is_allowed_where_get_is(self) -> None:
        t = table(rule("/a", methods=frozenset({"GET"})))
        self.assertEqual(self.value(t, b"/a", b"HEAD"), "/a")

    def test_head_is_not_allowed_without_get(self) -> None:
        t = table(rule("/a", methods=frozenset({"POST"})))
        self.assertEqual(t.match(None, b"/a", b"HEAD"), MethodNotAllowed(("POST",)))

    def test_host_rule_without_method_falls_back_to_hostless_rule(self) -> None:
        t = table(rule("/a", "host", host="h.test", methods=frozenset({"GET"})), rule("/a", "any"))
        self.assertEqual(self.value(t, b"/a", b"POST", host=b"h.test"), "any")

    def test_unmatched_path_with_other_methods_is_404_not_405(self) -> None:
        t = table(rule("/a", methods=frozenset({"GET"})))
        self.assertIsNone(t.match(None, b"/b", b"POST"))


class StripPathTests(RoutingTestCase):
    """strip_path removes the pattern's fixed part and keeps the rest byte-for-byte."""

    def setUp(self) -> None:
        self.table = table(rule("/api/users/*", strip_path=True))

    def test_strip_path_keeps_query_string(self) -> None:
        self.assertEqual(self.upstream(self.table, b"/api/users/42?x=1"), b"/42?x=1")

    def test_strip_path_of_prefix_gives_root(self) -> None:
        self.assertEqual(self.upstream(self.table, b"/api/users"), b"/")

    def test_strip_path_of_prefix_with_slash_gives_root(self) -> None:
        self.assertEqual(self.upstream(self.table, b"/api/users/"), b"/")

    def test_strip_path_keeps_percent_encoding_and_query_bytes(self) -> None:
        self.assertEqual(self.upstream(self.table, b"/api/users/a%2Fb?q=%20x"), b"/a%2Fb?q=%20x")

    def test_strip_path_keeps_trailing_slash_of_rest(self) -> None:
        self.assertEqual(self.upstream(self.table, b"/api/users/a/"), b"/a/")

    def test_strip_path_keeps_empty_query_marker(self) -> None:
        self.assertEqual(self.upstream(self.table, b"/api/users/a?"), b"/a?")

    def test_strip_path_keeps_raw_bytes_of_encoded_prefix_rest(self) -> None:
        self.assertEqual(self.upstream(self.table, b"/%61pi/users/%7Ex"), b"/%7Ex")

    def test_strip_exact_pattern_gives_root_and_query(self) -> None:
        t = table(rule("/a/b", strip_path=True))
        self.assertEqual(self.upstream(t, b"/a/b?q"), b"/?q")

    def test_strip_param_pattern_removes_whole_pattern(self) -> None:
        t = table(rule("/u/{id}", strip_path=True))
        self.assertEqual(self.upstream(t, b"/u/7"), b"/")

    def test_strip_param_wildcard_removes_fixed_part(self) -> None:
        t = table(rule("/u/{id}/*", strip_path=True))
        self.assertEqual(self.upstream(t, b"/u/7/x"), b"/x")

    def test_catch_all_strip_keeps_whole_path(self) -> None:
        t = table(rule("/*", strip_path=True))
        self.assertEqual(self.upstream(t, b"/a/b?c"), b"/a/b?c")

    def test_without_strip_path_target_is_forwarded_unchanged(self) -> None:
        t = table(rule("/api/*"))
        target = b"/api/a%2Fb/%7e//x?q=%20x&y=?z"
        self.assertEqual(self.upstream(t, target), target)

    def test_query_is_everything_after_first_question_mark(self) -> None:
        t = table(rule("/a"))
        self.assertEqual(self.upstream(t, b"/a?b?c/../d"), b"/a?b?c/../d")


class DotSegmentTests(RoutingTestCase):
    """Dot segments are resolved before matching and never forwarded."""

    def setUp(self) -> None:
        self.table = table(rule("/*"))

    def test_single_dot_is_removed(self) -> None:
        self.assertEqual(self.upstream(self.table, b"/a/./b"), b"/a/b")

    def test_trailing_dot_dot_keeps_trailing_slash(self) -> None:
        self.assertEqual(self.upstream(self.table, b"/a/b/.."), b"/a/")

    def test_trailing_single_dot_keeps_trailing_slash(self) -> None:
        self.assertEqual(self.upstream(self.table, b"/a/."), b"/a/")

    def test_dot_dot_to_root(self) -> None:
        self.assertEqual(self.upstream(self.table, b"/a/.."), b"/")

    def test_dot_dot_keeps_query(self) -> None:
        self.assertEqual(self.upstream(self.table, b"/a/../b?x=/../"), b"/b?x=/../")

    def test_encoded_dot_dot_is_resolved(self) -> None:
        self.assertEqual(self.upstream(self.table, b"/a/%2e%2E/b"), b"/b")

    def test_mixed_encoded_dot_dot_is_resolved(self) -> None:
        self.assertEqual(self.upstream(self.table, b"/a/b/.%2E/c"), b"/a/c")

    def test_resolution_keeps_raw_bytes_of_other_segments(self) -> None:
        self.assertEqual(self.upstream(self.table, b"/%7Ea/x/../b%2F"), b"/%7Ea/b%2F")

    def test_dot_segments_are_resolved_before_matching(self) -> None:
        t = table(rule("/public/*", "public"), rule("/admin/*", "admin"))
        self.assertEqual(self.value(t, b"/public/../admin/x"), "admin")

    def test_dot_resolution_happens_before_strip(self) -> None:
        t = table(rule("/api/*", strip_path=True))
        self.assertEqual(self.upstream(t, b"/api/a/../b"), b"/b")

    def test_dot_dot_cannot_escape_a_stripped_prefix(self) -> None:
        t = table(rule("/api/*", strip_path=True))
        self.assertIsNone(self.value(t, b"/api/../secret"))

    def test_climbing_above_root_raises_bad_path(self) -> None:
        for target in (b"/..", b"/../a", b"/a/../../b", b"/./..", b"/%2e%2e/x", b"/a/%2E./.."):
            self.assertBadPath(self.table, target)

    def test_no_dot_dot_segment_is_ever_forwarded(self) -> None:
        nasty = [
            b"/a/b/../../c",
            b"/a/b/%2e%2e/%2E%2e/c/..",
            b"/a/.%2e/b/%2e./c?../..",
            b"/a/./../b/./../c/.",
            b"//../a/..",
            b"/a/b/c/../../../",
            b"http://h/a/../b/%2e%2e",
        ]
        for strip in (False, True):
            t = table(rule("/*", strip_path=strip), rule("/a/*", strip_path=strip))
            for target in nasty:
                result = t.match(None, target, b"GET")
                assert isinstance(result, RouteMatch), target
                path = result.upstream_target.partition(b"?")[0]
                self.assertTrue(path.startswith(b"/"), target)
                for segment in path.split(b"/"):
                    decoded = segment.replace(b"%2e", b".").replace(b"%2E", b".")
                    self.assertNotIn(decoded, (b".", b".."), (strip, target))


class EncodingTests(RoutingTestCase):
    """Percent-escapes of unreserved characters cannot be used to bypass a route."""

    def setUp(self) -> None:
        self.table = table(rule("/*", "public"), rule("/admin/*", "admin"))

    def test_encoded_unreserved_letter_matches_route(self) -> None:
        self.assertEqual(self.value(self.table, b"/%61dmin/x"), "admin")

    def test_lowercase_hex_escape_matches_route(self) -> None:
        self.assertEqual(self.value(self.table, b"/%61%64%6d%69%6e"), "admin")

    def test_encoded_unreserved_is_forwarded_raw(self) -> None:
        self.assertEqual(self.upstream(self.table, b"/%61dmin/x"), b"/%61dmin/x")

    def test_encoded_reserved_character_is_not_decoded(self) -> None:
        t = table(rule("/a/b", "ab"), rule("/*", "other"))
        self.assertEqual(self.value(t, b"/a%2Fb"), "other")

    def test_invalid_escape_is_kept(self) -> None:
        match = self.route(table(rule("/{x}")), b"/%zz%4")
        self.assertEqual(match.params, {"x": "%zz%4"})


class TargetFormTests(RoutingTestCase):
    """Origin-form and absolute-form targets; everything else is a BadPath."""

    def setUp(self) -> None:
        self.table = table(rule("/*"))

    def test_absolute_form_uses_path_and_query(self) -> None:
        self.assertEqual(self.upstream(self.table, b"http://h.test:8080/a/b?q=1"), b"/a/b?q=1")

    def test_absolute_form_https_scheme_case_insensitive(self) -> None:
        self.assertEqual(self.upstream(self.table, b"HTTPS://h.test/a"), b"/a")

    def test_absolute_form_without_path_is_root(self) -> None:
        self.assertEqual(self.upstream(self.table, b"http://h.test"), b"/")

    def test_absolute_form_with_query_but_no_path(self) -> None:
        self.assertEqual(self.upstream(self.table, b"http://h.test?x=/y"), b"/?x=/y")

    def test_absolute_form_is_matched_on_its_path(self) -> None:
        t = table(rule("/admin/*", "admin"), rule("/*", "other"))
        self.assertEqual(self.value(t, b"http://h.test/admin/x"), "admin")

    def test_invalid_targets_raise_bad_path(self) -> None:
        for target in (b"*", b"", b"a/b", b"?x", b"ftp://h/x", b"http://", b"http:///a", b"h/a"):
            self.assertBadPath(self.table, target)


class ParsePatternTests(SynchronousTestCase):
    """parse_pattern accepts valid patterns and explains invalid ones."""

    def assertRejected(self, pattern: str, reason: str) -> None:
        """parse_pattern(pattern) raises PatternError whose message contains ``reason``."""
        with self.assertRaises(PatternError) as caught:
            parse_pattern(pattern)
        self.assertIn(reason, str(caught.exception))

    def test_accepts_valid_patterns(self) -> None:
        for pattern in ("/", "/*", "/a", "/a/b", "/a/*", "/a/{id}", "/a/{id}/*", "/{a}/{b_2}"):
            self.assertIsNone(parse_pattern(pattern), pattern)

    def test_rejects_missing_leading_slash(self) -> None:
        self.assertRejected("a/b", "must start with '/'")

    def test_rejects_empty_pattern(self) -> None:
        self.assertRejected("", "must start with '/'")

    def test_rejects_wildcard_not_last(self) -> None:
        self.assertRejected("/*/a", "'*' is only allowed as the last segment")

    def test_rejects_wildcard_inside_segment(self) -> None:
        self.assertRejected("/a*", "'*' must be a whole segment")

    def test_rejects_param_not_whole_segment(self) -> None:
        self.assertRejected("/a{id}", "'{name}' must be a whole segment")

    def test_rejects_two_params_in_one_segment(self) -> None:
        self.assertRejected("/{a}{b}", "'{name}' must be a whole segment")

    def test_rejects_param_name_not_identifier(self) -> None:
        self.assertRejected("/{1x}", "not a valid identifier")

    def test_rejects_empty_param_name(self) -> None:
        self.assertRejected("/{}", "not a valid identifier")

    def test_rejects_duplicate_param_name(self) -> None:
        self.assertRejected("/{id}/x/{id}", "duplicate parameter name 'id'")

    def test_rejects_dot_segment(self) -> None:
        self.assertRejected("/a/./b", "'.' and '..' segments are not allowed")

    def test_rejects_dot_dot_segment(self) -> None:
        self.assertRejected("/a/..", "'.' and '..' segments are not allowed")

    def test_rejects_encoded_dot_dot_segment(self) -> None:
        self.assertRejected("/a/%2E%2e", "'.' and '..' segments are not allowed")

    def test_rejects_question_mark(self) -> None:
        self.assertRejected("/a?b", "'?' and '#' are not allowed")

    def test_rejects_hash(self) -> None:
        self.assertRejected("/a#b", "'?' and '#' are not allowed")

    def test_rejects_empty_segment(self) -> None:
        self.assertRejected("/a//b", "empty segment")

    def test_rejects_trailing_slash(self) -> None:
        self.assertRejected("/a/", "empty segment")

    def test_rejects_non_ascii(self) -> None:
        self.assertRejected("/caf\u00e9", "ASCII")

    def test_pattern_error_is_value_error(self) -> None:
        self.assertTrue(issubclass(PatternError, ValueError))

    def test_route_table_rejects_invalid_pattern(self) -> None:
        with self.assertRaises(PatternError):
            RouteTable([RouteRule("/a/*/b", None)])
