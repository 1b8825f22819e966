"""Redis URLs: every accepted form, percent-decoding, the errors and the redacted form."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, replace

from twisted.trial.unittest import SynchronousTestCase

from avx_twisted.urls import RedisURL, parse_redis_url

#: (url, the RedisURL it parses to)
ACCEPTED = [
    ("redis://127.0.0.1:6379/0", RedisURL(host="127.0.0.1", port=6379, db=0)),
    ("redis://r", RedisURL(host="r")),
    ("redis://r/", RedisURL(host="r")),
    ("redis://r:6380", RedisURL(host="r", port=6380)),
    ("redis://r:6380/15", RedisURL(host="r", port=6380, db=15)),
    ("redis://r/16", RedisURL(host="r", db=16)),  # 0-15 is the server's business
    ("redis://r?db=3", RedisURL(host="r", db=3)),
    ("redis://r/?db=3", RedisURL(host="r", db=3)),
    ("REDIS://Cache.Example.COM", RedisURL(host="cache.example.com")),
    ("redis://[::1]", RedisURL(host="::1")),
    ("redis://[::1]:7000/2", RedisURL(host="::1", port=7000, db=2)),
    ("redis://:pw@r", RedisURL(host="r", password="pw")),
    ("redis://alice:pw@r:1/2", RedisURL(host="r", port=1, db=2, username="alice", password="pw")),
    ("redis://:@r", RedisURL(host="r")),  # empty password: none (redis-py)
    ("redis://:p@ss:w0rd@r", RedisURL(host="r", password="p@ss:w0rd")),  # last '@' ends it
    ("redis://:a%2Fb%3Fc%23d%40e%3Af%25@r", RedisURL(host="r", password="a/b?c#d@e:f%")),
    ("redis://al%3Ace:%C3%A9t%C3%A9@r", RedisURL(host="r", username="al:ce", password="été")),
    ("redis://:a[b]c@r", RedisURL(host="r", password="a[b]c")),
    ("rediss://r", RedisURL(tls=True, host="r")),
    (
        "rediss://u:pw@r:6380/1",
        RedisURL(tls=True, host="r", port=6380, db=1, username="u", password="pw"),
    ),
    (
        "rediss://r?ssl_ca_certs=/etc/redis/ca.pem",
        RedisURL(tls=True, host="r", ca_file="/etc/redis/ca.pem"),
    ),
    (
        "rediss://r?ssl_ca_certs=%2Fa%20b%2Fca.pem",
        RedisURL(tls=True, host="r", ca_file="/a b/ca.pem"),
    ),
    ("rediss://r?ssl_cert_reqs=required", RedisURL(tls=True, host="r")),
    ("rediss://r?ssl_cert_reqs=none", RedisURL(tls=True, host="r", verify=False)),
    ("rediss://r/4?ssl_cert_reqs=none", RedisURL(tls=True, host="r", db=4, verify=False)),
    (
        "rediss://[::1]:6380?ssl_ca_certs=/ca.pem&db=2",
        RedisURL(tls=True, host="::1", port=6380, db=2, ca_file="/ca.pem"),
    ),
    ("unix:///run/redis/redis.sock", RedisURL(host=None, port=0, path="/run/redis/redis.sock")),
    ("unix:///run/redis.sock?db=5", RedisURL(host=None, port=0, path="/run/redis.sock", db=5)),
    (
        "unix://:pw@/run/redis.sock",
        RedisURL(host=None, port=0, path="/run/redis.sock", password="pw"),
    ),
    (
        "unix://bob:p%40w@/run/redis.sock?db=1",
        RedisURL(host=None, port=0, path="/run/redis.sock", db=1, username="bob", password="p@w"),
    ),
    ("unix:///tmp/a%20b.sock", RedisURL(host=None, port=0, path="/tmp/a b.sock")),
]

#: (url, the reason parse_redis_url gives)
REFUSED = [
    ("http://r:6379", "is not a redis://, rediss:// or unix:// URL"),
    ("redis:r", "is not a redis://, rediss:// or unix:// URL"),
    ("r:6379", "is not a redis://, rediss:// or unix:// URL"),
    ("redis://r /0", "contains whitespace or control characters"),
    ("redis://r\n", "contains whitespace or control characters"),
    ("redis://", "has no host"),
    ("redis://:6379/0", "has no host"),
    ("redis://:pw@", "has no host"),
    ("redis://r:0", "has an invalid port in 'r:0' (expected 1-65535)"),
    ("redis://r:65536", "has an invalid port in 'r:65536' (expected 1-65535)"),
    ("redis://r:", "has an invalid port in 'r:' (expected 1-65535)"),
    ("redis://r:+1", "has an invalid port in 'r:+1' (expected 1-65535)"),
    ("redis://r:http", "has an invalid port in 'r:http' (expected 1-65535)"),
    ("redis://[::1]x", "has an invalid port in '[::1]x' (expected 1-65535)"),
    ("redis://[::1", "has an invalid IPv6 host '[::1'"),
    ("redis://[::g]:1", "has an invalid IPv6 host '[::g]:1'"),
    ("redis://::1", "has no host"),
    ("redis://ex ample", "contains whitespace or control characters"),
    ("redis://ex%41mple", "has an invalid host 'ex%41mple'"),
    (
        "redis://bücher.example",
        "has host 'bücher.example', which is not ASCII (use its punycode form)",
    ),
    ("redis://r/x", "has db 'x', which is not a non-negative integer"),
    ("redis://r/-1", "has db '-1', which is not a non-negative integer"),
    ("redis://r/1/", "has db '1/', which is not a non-negative integer"),
    ("redis://r?db=%2B1", "has db '+1', which is not a non-negative integer"),
    ("redis://r/1?db=1", "gives the db twice (in the path and as ?db=)"),
    ("redis://r?db=", "has an empty ?db="),
    ("redis://r?db=1&db=2", "repeats ?db="),
    (
        "redis://r?timeout=1",
        "has unknown query parameter 'timeout' (known: db, ssl_ca_certs, ssl_cert_reqs)",
    ),
    (
        "redis://r?a=1&b",
        "has unknown query parameters 'a', 'b' (known: db, ssl_ca_certs, ssl_cert_reqs)",
    ),
    (
        "redis://r?ssl_ca_certs=/ca.pem",
        "has ssl_ca_certs or ssl_cert_reqs, which only apply to rediss://",
    ),
    (
        "redis://r?ssl_cert_reqs=none",
        "has ssl_ca_certs or ssl_cert_reqs, which only apply to rediss://",
    ),
    (
        "unix:///s.sock?ssl_cert_reqs=none",
        "has ssl_ca_certs or ssl_cert_reqs, which only apply to rediss://",
    ),
    (
        "rediss://r?ssl_cert_reqs=optional",
        "has ssl_cert_reqs='optional' (expected 'required', or 'none')",
    ),
    (
        "rediss://r?ssl_cert_reqs=none&ssl_ca_certs=/ca.pem",
        "has both ssl_ca_certs and ssl_cert_reqs=none (pick one)",
    ),
    ("redis://alice@r", "has a user name but no password (write :password@ for a password alone)"),
    ("redis://:%FF@r", "has a user name or password that is not percent-encoded UTF-8"),
    (
        "redis://r#0",
        "has a '#' (a fragment is not allowed; percent-encode '/', '?', '#' and '@' "
        "in the user name and password)",
    ),
    (
        "redis://:a/b@r",
        "has an '@' after the host (percent-encode '/', '?', '#' and '@' in the "
        "user name and password)",
    ),
    (
        "redis://:a?b@r",
        "has an '@' after the host (percent-encode '/', '?', '#' and '@' in the "
        "user name and password)",
    ),
    ("unix://", "has no socket path (expected unix:///path/to/redis.sock)"),
    ("unix:///", "has no socket path (expected unix:///path/to/redis.sock)"),
    ("unix://:pw@", "has no socket path (expected unix:///path/to/redis.sock)"),
    (
        "unix://run/redis.sock",
        "has host 'run' (expected unix://[[username]:password@]/path/to/redis.sock)",
    ),
    (
        "unix://localhost:6379/s.sock",
        "has host 'localhost:6379' (expected unix://[[username]:password@]/path/to/redis.sock)",
    ),
    ("unix:///s.sock?db=x", "has db 'x', which is not a non-negative integer"),
]


class ParseRedisURLTests(SynchronousTestCase):
    def test_every_accepted_form(self) -> None:
        for url, expected in ACCEPTED:
            with self.subTest(url=url):
                self.assertEqual(parse_redis_url(url), expected)

    def test_every_refusal_says_why(self) -> None:
        for url, reason in REFUSED:
            with self.subTest(url=url):
                with self.assertRaises(ValueError) as caught:
                    parse_redis_url(url)
                self.assertEqual(str(caught.exception), reason)

    def test_defaults_are_redis_py_s(self) -> None:
        url = parse_redis_url("redis://r")
        self.assertEqual((url.tls, url.port, url.db, url.path), (False, 6379, 0, None))
        self.assertEqual(
            (url.username, url.password, url.ca_file, url.verify), (None, None, None, True)
        )

    def test_tls_verifies_by_default(self) -> None:
        url = parse_redis_url("rediss://:pw@r")
        self.assertTrue(url.tls)
        self.assertTrue(url.verify)
        self.assertIsNone(url.ca_file)
        self.assertEqual(url.password, "pw")

    def test_unix_socket_has_a_path_and_no_host(self) -> None:
        url = parse_redis_url("unix:///run/redis.sock")
        self.assertEqual(
            (url.path, url.host, url.port, url.tls), ("/run/redis.sock", None, 0, False)
        )

    def test_refusals_never_repeat_the_password(self) -> None:
        secret = "s3cretpw"
        for url in [
            f"redis://:{secret}#@r",
            f"redis://:{secret}/x@r",
            f"redis://:{secret}?x@r",
            f"redis://:{secret}@r:99999",
            f"redis://:{secret}@r/x",
            f"redis://:{secret}@r?nope=1",
            f"unix://:{secret}@h/s.sock",
            f"redis://{secret}@r",
            f"redis://:{secret}@",
        ]:
            with self.subTest(url=url):
                with self.assertRaises(ValueError) as caught:
                    parse_redis_url(url)
                self.assertNotIn(secret, str(caught.exception))

    def test_a_parsed_url_is_frozen(self) -> None:
        url = parse_redis_url("redis://r")
        with self.assertRaises(FrozenInstanceError):
            url.port = 1  # type: ignore[misc]


class RedactedTests(SynchronousTestCase):
    def test_password_is_starred(self) -> None:
        url = parse_redis_url("rediss://alice:s3cret@r:6380/2?ssl_ca_certs=/etc/ca.pem")
        self.assertEqual(url.redacted(), "rediss://alice:***@r:6380/2?ssl_ca_certs=/etc/ca.pem")

    def test_password_alone_is_starred(self) -> None:
        self.assertEqual(parse_redis_url("redis://:s3cret@r").redacted(), "redis://:***@r:6379/0")

    def test_without_credentials_shows_port_and_db(self) -> None:
        self.assertEqual(parse_redis_url("redis://r").redacted(), "redis://r:6379/0")

    def test_ipv6_host_is_bracketed(self) -> None:
        self.assertEqual(parse_redis_url("redis://[::1]:7/1").redacted(), "redis://[::1]:7/1")

    def test_unverified_tls_stays_visible(self) -> None:
        self.assertEqual(
            parse_redis_url("rediss://r?ssl_cert_reqs=none").redacted(),
            "rediss://r:6379/0?ssl_cert_reqs=none",
        )

    def test_unix_socket(self) -> None:
        self.assertEqual(
            parse_redis_url("unix://u:pw@/run/r%20s.sock?db=3").redacted(),
            "unix://u:***@/run/r%20s.sock?db=3",
        )
        self.assertEqual(parse_redis_url("unix:///run/r.sock").redacted(), "unix:///run/r.sock")

    def test_encoded_user_name_stays_encoded(self) -> None:
        self.assertEqual(
            parse_redis_url("redis://a%3Ab:pw@r").redacted(), "redis://a%3Ab:***@r:6379/0"
        )

    def test_redacted_parses_back_to_the_same_url_without_the_password(self) -> None:
        for url, expected in ACCEPTED:
            with self.subTest(url=url):
                again = parse_redis_url(expected.redacted())
                self.assertEqual(
                    again, replace(expected, password="***" if expected.password else None)
                )

    def test_never_shows_the_password(self) -> None:
        for url, expected in ACCEPTED:
            if expected.password:
                with self.subTest(url=url):
                    self.assertNotIn(expected.password, expected.redacted())
                    self.assertNotIn(expected.password, repr(expected))
