"""RFC 9111 rules of the shared cache, one by one, with times passed in (no clock, no I/O)."""

from __future__ import annotations

import pytest

from avx_twisted import cache
from avx_twisted.cache import FRESH, REVALIDATE, STALE_OK, Policy

DATE = b"Tue, 01 Dec 2026 12:00:00 GMT"
T0 = cache.http_date(DATE)
POLICY = Policy()


def cc(value: str) -> list[tuple[bytes, bytes]]:
    return [(b"Cache-Control", value.encode())]


def test_cache_control_parsing():
    d = cache.parse_cache_control([b'max-age=60, no-cache="Set-Cookie, X", Public', b"s-maxage=5"])
    assert d == {
        b"max-age": b"60",
        b"no-cache": b"Set-Cookie, X",
        b"public": None,
        b"s-maxage": b"5",
    }
    assert cache.delta_seconds(d, b"max-age") == 60
    assert cache.delta_seconds(cache.parse_cache_control([b"max-age=abc"]), b"max-age") is None
    assert (
        cache.delta_seconds(cache.parse_cache_control([b"max-age=99999999999"]), b"max-age")
        == 2**31
    )
    # The first of two conflicting values wins.
    assert cache.parse_cache_control([b"max-age=1, max-age=2"])[b"max-age"] == b"1"


@pytest.mark.parametrize(
    "status,fields,why",
    [
        (200, cc("max-age=60"), None),
        (200, cc("no-store, max-age=60"), "no-store"),
        (200, cc("private, max-age=60"), "private"),
        (200, [], "no-freshness"),  # no explicit freshness, no default_ttl_s
        (200, [(b"Expires", DATE)], None),
        (206, cc("max-age=60"), "status"),  # partial: only complete entries
        (299, cc("max-age=60"), None),  # unknown, with explicit freshness
        (299, [], "no-freshness"),
        (299, cc("max-age=60, must-understand"), "status"),
        (304, cc("max-age=60"), "status"),
        (200, cc("max-age=60") + [(b"Set-Cookie", b"a=b")], "set-cookie"),
        (200, cc("max-age=60") + [(b"Vary", b"*")], "vary-star"),
        (200, cc("no-cache") + [(b"ETag", b'"x"')], None),  # kept to be revalidated
    ],
)
def test_what_may_be_stored(status, fields, why):
    assert cache.storable(b"GET", status, [], fields, POLICY) == why


def test_heuristic_freshness_only_when_the_route_allows_it():
    assert cache.storable(b"GET", 200, [], [], Policy(default_ttl_s=30)) is None
    assert cache.storable(b"GET", 302, [], [], Policy(default_ttl_s=30)) == "no-freshness"
    assert cache.freshness_lifetime([], Policy(default_ttl_s=30)) == 30


def test_only_get_is_stored_and_request_no_store_wins():
    assert cache.storable(b"POST", 200, [], cc("max-age=60"), POLICY) == "method"
    assert cache.storable(b"GET", 200, cc("no-store"), cc("max-age=60"), POLICY) == "no-store"


def test_authorization_needs_public_s_maxage_or_must_revalidate():
    auth = [(b"Authorization", b"Bearer x")]
    assert cache.storable(b"GET", 200, auth, cc("max-age=60"), POLICY) == "authorization"
    for allowed in ("public, max-age=60", "s-maxage=60", "must-revalidate, max-age=60"):
        assert cache.storable(b"GET", 200, auth, cc(allowed), POLICY) is None, allowed


def test_set_cookie_is_stored_when_the_route_says_so():
    fields = cc("max-age=60") + [(b"Set-Cookie", b"a=b")]
    assert cache.storable(b"GET", 200, [], fields, Policy(store_set_cookie=True)) is None


def test_freshness_order_s_maxage_max_age_expires():
    assert cache.freshness_lifetime(cc("max-age=10, s-maxage=20"), POLICY) == 20
    assert cache.freshness_lifetime(cc("max-age=10") + [(b"Expires", DATE)], POLICY) == 10
    later = b"Tue, 01 Dec 2026 12:05:00 GMT"
    assert cache.freshness_lifetime([(b"Date", DATE), (b"Expires", later)], POLICY) == 300
    assert cache.freshness_lifetime([(b"Date", DATE), (b"Expires", b"0")], POLICY) == 0
    assert cache.freshness_lifetime(cc("max-age=oops"), Policy(default_ttl_s=99)) == 0


def test_age_counts_the_age_field_the_delay_and_residence():
    fields = [(b"Date", DATE), (b"Age", b"30")]
    # Fetched in 2 s, stored at T0 + 2, asked at T0 + 12: 30 + 2 + 10.
    assert cache.current_age(fields, T0, T0 + 2, T0 + 12) == 42
    # An Age that is not one non-negative integer: the age cannot be known (stale).
    for bad in (b"abc", b"-7200", b"7200.0", b"3600, 0", b"1;a=b"):
        assert cache.current_age([(b"Age", bad)], T0, T0, T0) == float("inf"), bad
    assert cache.current_age([(b"Age", b"0"), (b"Age", b"0")], T0, T0, T0) == float("inf")
    # A Date in the past makes the apparent age count when larger.
    assert cache.current_age([(b"Date", DATE)], T0 + 100, T0 + 100, T0 + 100) == 100


def test_vary_keys_normalise_accept_encoding():
    assert cache.vary_names([(b"Vary", b"Accept-Encoding, accept-language")]) == (
        b"accept-encoding",
        b"accept-language",
    )
    assert cache.vary_names([(b"Vary", b"a, *")]) is None
    names = (b"accept-encoding",)
    one = cache.variant_key(names, [(b"Accept-Encoding", b"gzip, br")])
    two = cache.variant_key(names, [(b"accept-encoding", b"br,GZIP")])
    assert one == two
    assert cache.variant_key(names, []) != cache.variant_key(names, [(b"Accept-Encoding", b"")])


def test_primary_key_has_the_routes_key_headers():
    fields = [(b"Accept-Language", b"fr")]
    key = cache.primary_key(b"http", b"Example.TEST", b"/a?b", [b"accept-language"], fields)
    assert key == b"http://example.test/a?b\naccept-language=fr"


def verdict(fields, request=(), now=T0, policy=POLICY):
    return cache.evaluate([(b"Date", DATE)] + list(fields), T0, T0, list(request), policy, now)


def test_fresh_then_stale():
    assert verdict(cc("max-age=60"), now=T0 + 59).use == FRESH
    assert verdict(cc("max-age=60"), now=T0 + 61).use == REVALIDATE


def test_request_directives():
    fields = cc("max-age=60")
    assert verdict(fields, cc("no-cache"), T0 + 1).use == REVALIDATE
    assert verdict(fields, cc("max-age=5"), T0 + 10).use == REVALIDATE
    assert verdict(fields, cc("max-age=50"), T0 + 10).use == FRESH
    assert verdict(fields, cc("min-fresh=55"), T0 + 10).use == REVALIDATE
    assert verdict(fields, cc("max-stale=30"), T0 + 80).use == STALE_OK
    assert verdict(fields, cc("max-stale=10"), T0 + 80).use == REVALIDATE
    assert verdict(fields, cc("max-stale"), T0 + 10000).use == STALE_OK
    assert verdict(fields, [(b"Pragma", b"no-cache")], T0 + 1).use == REVALIDATE


def test_stale_while_revalidate_from_the_response_or_the_route_floor():
    v = verdict(cc("max-age=10, stale-while-revalidate=30"), now=T0 + 20)
    assert (v.use, v.refresh) == (STALE_OK, True)
    assert verdict(cc("max-age=10, stale-while-revalidate=30"), now=T0 + 41).use == REVALIDATE
    floor = Policy(stale_while_revalidate_s=60)
    assert verdict(cc("max-age=10"), now=T0 + 50, policy=floor).use == STALE_OK


@pytest.mark.parametrize("directive", ["must-revalidate", "proxy-revalidate", "s-maxage=10"])
def test_never_served_stale_whatever_the_floors(directive):
    floor = Policy(stale_while_revalidate_s=600, stale_if_error_s=600)
    fields = cc(f"max-age=10, {directive}, stale-while-revalidate=600")
    assert verdict(fields, cc("max-stale"), T0 + 30, floor).use == REVALIDATE
    assert cache.store_for(fields, floor) == 10  # no stale window kept either


def test_stale_if_error_window():
    fields = cc("max-age=10, stale-if-error=100")
    response_cc = cache.parse_cache_control(cache.get_all(fields, b"cache-control"))
    assert cache.stale_if_error(response_cc, [], POLICY) == 100
    assert cache.stale_if_error({}, cc("stale-if-error=5"), Policy(stale_if_error_s=20)) == 20


def test_conditional_requests_against_a_stored_response():
    stored = [(b"ETag", b'W/"v1"'), (b"Last-Modified", DATE)]
    assert cache.not_modified([(b"If-None-Match", b'"v1"')], stored)  # weak comparison
    assert cache.not_modified([(b"If-None-Match", b'"v0", W/"v1"')], stored)
    assert not cache.not_modified([(b"If-None-Match", b'"v2"')], stored)
    assert cache.not_modified([(b"If-None-Match", b"*")], stored)
    assert cache.not_modified([(b"If-Modified-Since", DATE)], stored)
    earlier = b"Tue, 01 Dec 2026 11:00:00 GMT"
    assert not cache.not_modified([(b"If-Modified-Since", earlier)], stored)
    # If-None-Match wins over If-Modified-Since.
    assert not cache.not_modified(
        [(b"If-None-Match", b'"v2"'), (b"If-Modified-Since", DATE)], stored
    )
    assert cache.revalidation_fields(stored) == [
        (b"If-None-Match", b'W/"v1"'),
        (b"If-Modified-Since", DATE),
    ]


def test_a_304_updates_the_stored_fields_but_not_the_framing():
    stored = [
        (b"Content-Length", b"5"),
        (b"ETag", b'"a"'),
        (b"Cache-Control", b"max-age=1"),
        (b"X", b"1"),
    ]
    fresh = [
        (b"Cache-Control", b"max-age=100"),
        (b"Content-Length", b"0"),
        (b"Connection", b"close"),
    ]
    updated = dict(cache.updated_fields(stored, fresh))
    assert updated[b"Cache-Control"] == b"max-age=100"
    assert updated[b"Content-Length"] == b"5"
    assert updated[b"X"] == b"1"
    assert b"Connection" not in updated
    # The stored ETag and Content-MD5 stay (they describe the stored body).
    kept = dict(cache.updated_fields(stored, [(b"ETag", b'"b"'), (b"Content-MD5", b"x")]))
    assert kept[b"ETag"] == b'"a"' and b"Content-MD5" not in kept


def test_invalidation_targets_same_host_locations_only():
    fields = [(b"Location", b"/things/2"), (b"Content-Location", b"http://other.test/x")]
    assert cache.invalidated_targets(b"api.test", b"/things", fields) == [b"/things", b"/things/2"]
    same = [(b"Content-Location", b"http://API.test/y")]
    assert cache.invalidated_targets(b"api.test", b"/t", same) == [b"/t", b"/y"]


def test_stored_fields_drop_hop_by_hop_and_connection_named():
    fields = [(b"Connection", b"x-hop"), (b"X-Hop", b"1"), (b"Keep-Alive", b"t"), (b"Y", b"2")]
    assert cache.stored_fields(fields) == [(b"Y", b"2")]


def test_cache_status_members():
    assert cache.cache_status(True, ttl=30) == b"avx; hit; ttl=30"
    assert cache.cache_status(False, "uri-miss", stored=True) == b"avx; fwd=uri-miss; stored"
    assert (
        cache.cache_status(False, "stale", detail="revalidated")
        == b'avx; fwd=stale; detail="revalidated"'
    )
