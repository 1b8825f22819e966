"""The httptools adapter and the framing policy (avx_twisted.h1._parse), fed bytes, no I/O.

Table-driven as h11's ``test_io.py``: every refusal is a row (its name, the bytes, the status a
server answers); the accepted edge cases are rows too.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

from twisted.trial.unittest import SynchronousTestCase

from avx_twisted.h1 import (
    ClientLimits,
    Fields,
    ProtocolViolation,
    RequestHead,
    RequestParser,
    ResponseHead,
    ResponseParser,
    ServerLimits,
    connection_tokens,
    valid_host,
)

#: Small limits, so that the size rows stay small.
LIMITS = ServerLimits(
    max_body_bytes=1000,
    max_request_line_bytes=100,
    max_header_bytes=200,
    max_header_fields=5,
)


class RequestRecorder:
    """The server protocol's side of a RequestParser: records what the parser reports."""

    def __init__(self) -> None:
        self.events: List[Tuple[str, Any]] = []

    def head_received(self, head: RequestHead) -> None:
        self.events.append(("head", head))

    def body_received(self, data: bytes) -> None:
        self.events.append(("body", data))

    def message_done(self) -> None:
        self.events.append(("done", None))

    @property
    def heads(self) -> List[RequestHead]:
        return [value for kind, value in self.events if kind == "head"]

    @property
    def body(self) -> bytes:
        return b"".join(value for kind, value in self.events if kind == "body")

    def kinds(self) -> List[str]:
        return [kind for kind, _ in self.events]


def parse(*reads: bytes, limits: ServerLimits = LIMITS) -> Tuple[RequestRecorder, Optional[int]]:
    """Feed ``reads`` one by one; what was reported, and the last feed's upgrade offset."""
    recorder = RequestRecorder()
    parser = RequestParser(recorder, limits)
    offset = None
    for data in reads:
        offset = parser.feed(data)
    return recorder, offset


def head_of(raw: bytes, limits: ServerLimits = LIMITS) -> RequestHead:
    recorder, _ = parse(raw, limits=limits)
    heads = recorder.heads
    assert len(heads) == 1, recorder.events
    return heads[0]


def request(*fields: bytes, start: bytes = b"GET / HTTP/1.1", body: bytes = b"") -> bytes:
    return start + b"\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n" + body


H = b"Host: example.com"
CHUNKED = b"Transfer-Encoding: chunked"
UPGRADE = (b"Connection: upgrade", b"Upgrade: websocket")

#: (name, request bytes, status). Every one is refused before its head reaches the server.
REFUSED = [
    # Framing of the body (RFC 9112 6).
    ("content_length_and_chunked", request(H, b"Content-Length: 5", CHUNKED), 400),
    ("two_content_lengths", request(H, b"Content-Length: 5", b"Content-Length: 5"), 400),
    ("content_length_plus", request(H, b"Content-Length: +5", body=b"hello"), 400),
    ("content_length_minus", request(H, b"Content-Length: -5", body=b"hello"), 400),
    ("content_length_list", request(H, b"Content-Length: 5, 6", body=b"hello"), 400),
    ("content_length_repeated_in_one_field", request(H, b"Content-Length: 5, 5"), 400),
    ("content_length_hex", request(H, b"Content-Length: 0x5", body=b"hello"), 400),
    ("content_length_empty", request(H, b"Content-Length: "), 400),
    ("transfer_encoding_gzip_chunked", request(H, b"Transfer-Encoding: gzip, chunked"), 400),
    ("transfer_encoding_identity", request(H, b"Transfer-Encoding: identity"), 400),
    ("transfer_encoding_twice", request(H, CHUNKED, CHUNKED), 400),
    ("transfer_encoding_in_http10", request(CHUNKED, start=b"POST / HTTP/1.0"), 400),
    # Host (RFC 9112 3.2).
    ("no_host_in_http11", request(), 400),
    ("two_hosts", request(H, H), 400),
    ("host_with_space", request(b"Host: a b"), 400),
    ("host_with_tab", request(b"Host: a\tb"), 400),
    ("host_with_control_char", request(b"Host: a\x01b"), 400),
    ("host_with_del", request(b"Host: a\x7fb"), 400),
    ("host_unclosed_ipv6", request(b"Host: [::1"), 400),
    ("host_after_ipv6", request(b"Host: [::1]x"), 400),
    ("host_port_too_large", request(b"Host: h:99999"), 400),
    ("host_two_ports", request(b"Host: h:1:2"), 400),
    ("host_with_userinfo", request(b"Host: evil@host"), 400),
    ("host_with_slash", request(b"Host: a/b"), 400),
    # The request line and the request-target.
    ("raw_0x80_in_target", request(H, start=b"GET /\x80 HTTP/1.1"), 400),
    ("space_in_target", request(H, start=b"GET /a b HTTP/1.1"), 400),
    ("lower_case_method", request(H, start=b"get / HTTP/1.1"), 400),
    ("unknown_http_version", request(H, start=b"GET / HTTP/1.2"), 400),
    ("asterisk_not_for_options", request(H, start=b"GET * HTTP/1.1"), 400),
    ("authority_form", request(b"Host: a:443", start=b"CONNECT a:443 HTTP/1.1"), 400),
    ("connect_with_origin_form", request(H, start=b"CONNECT / HTTP/1.1"), 400),
    ("absolute_form_userinfo", request(H, start=b"GET http://evil@host/ HTTP/1.1"), 400),
    ("absolute_form_empty_authority", request(H, start=b"GET http:///x HTTP/1.1"), 400),
    ("absolute_form_bad_port", request(H, start=b"GET http://a:99999/ HTTP/1.1"), 400),
    ("http2_preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
    ("http_2_0", request(H, start=b"GET / HTTP/2.0"), 505),
    ("http_0_9", request(H, start=b"GET / HTTP/0.9"), 505),
    # Field lines (RFC 9112 5).
    ("obs_fold", request(H, b"X-Folded: a", b" b"), 400),
    ("bare_lf_after_request_line", b"GET / HTTP/1.1\nHost: a\r\n\r\n", 400),
    ("bare_lf_after_field", b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", 400),
    ("bare_lf_only", b"GET / HTTP/1.1\nHost: a\n\n", 400),
    ("bare_cr_after_field", b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", 400),
    ("nul_in_field_value", request(H, b"X: a\x00b"), 400),
    ("space_before_colon", request(H, b"X : b"), 400),
    # Upgrade requests with a body: httptools would hand the body over as the next request.
    ("upgrade_with_content_length", request(H, *UPGRADE, b"Content-Length: 3", body=b"abc"), 400),
    ("upgrade_with_chunked_body", request(H, *UPGRADE, CHUNKED, body=b"0\r\n\r\n"), 400),
    (
        "connect_with_body",
        request(H, b"Content-Length: 1", start=b"CONNECT http://a/ HTTP/1.1"),
        400,
    ),
    # Sizes.
    ("declared_body_over_the_cap", request(H, b"Content-Length: 1001"), 413),
    ("declared_body_of_20_digits", request(H, b"Content-Length: 99999999999999999999"), 413),
    ("declared_body_of_5000_digits", request(H, b"Content-Length: " + b"9" * 5000), 413),
    ("request_line_over_the_limit", request(H, start=b"GET /" + b"a" * 100 + b" HTTP/1.1"), 414),
    ("request_target_never_ending", b"GET /" + b"a" * 200, 414),
    ("too_many_fields", request(H, *(b"X-%d: v" % i for i in range(5))), 431),
    ("header_section_too_large", request(H, b"X-A: " + b"a" * 120, b"X-B: " + b"b" * 80), 431),
]


def _refusal_test(raw: bytes, status: int) -> Callable[[SynchronousTestCase], None]:
    def test(self: SynchronousTestCase) -> None:
        recorder = RequestRecorder()
        parser = RequestParser(recorder, LIMITS)
        violation = self.assertRaises(ProtocolViolation, parser.feed, raw)
        self.assertEqual(violation.status, status, violation.reason)
        self.assertEqual(recorder.heads, [])

    return test


class RefusalTests(SynchronousTestCase):
    """Each row of ``REFUSED`` is one test, ``test_refuses_<name>``."""

    def test_framing_refusal_carries_the_head(self) -> None:
        """A head that llhttp parsed but the policy refuses rides on the violation, so the
        refusal can be answered (and logged) with its method and target."""
        parser = RequestParser(RequestRecorder(), LIMITS)
        violation = self.assertRaises(
            ProtocolViolation, parser.feed, request(H, H, start=b"DELETE /x HTTP/1.1")
        )
        self.assertEqual((violation.head.method, violation.head.target), (b"DELETE", b"/x"))

    def test_never_ending_field_value(self) -> None:
        """httptools buffers a field line until its end: one that never ends is refused."""
        parser = RequestParser(RequestRecorder(), LIMITS)
        parser.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: ")
        violation = self.assertRaises(ProtocolViolation, parser.feed, b"v" * 300)
        self.assertEqual(violation.status, 431)

    def test_never_ending_field_in_the_first_read(self) -> None:
        parser = RequestParser(RequestRecorder(), LIMITS)
        violation = self.assertRaises(
            ProtocolViolation, parser.feed, b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: " + b"v" * 300
        )
        self.assertEqual(violation.status, 431)

    def test_never_ending_field_after_pipelined_requests(self) -> None:
        parser = RequestParser(RequestRecorder(), LIMITS)
        violation = self.assertRaises(
            ProtocolViolation, parser.feed, request(H) * 3 + b"GET / HTTP/1.1\r\nX: " + b"v" * 300
        )
        self.assertEqual(violation.status, 431)

    def test_never_ending_field_name(self) -> None:
        parser = RequestParser(RequestRecorder(), LIMITS)
        parser.feed(b"GET / HTTP/1.1\r\nHost: a\r\n")
        violation = self.assertRaises(ProtocolViolation, parser.feed, b"X" * 300)
        self.assertEqual(violation.status, 431)

    def test_never_ending_field_in_small_reads(self) -> None:
        parser = RequestParser(RequestRecorder(), LIMITS)
        parser.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: ")
        with self.assertRaises(ProtocolViolation) as caught:
            for _ in range(100):
                parser.feed(b"v" * 10)
        self.assertEqual(caught.exception.status, 431)

    def test_chunked_body_over_the_cap(self) -> None:
        """A chunked body has no declared size: it is refused when it crosses the cap, after
        its head went to the server."""
        recorder = RequestRecorder()
        parser = RequestParser(recorder, LIMITS)
        raw = request(H, b"Transfer-Encoding: chunked", start=b"POST / HTTP/1.1")
        violation = self.assertRaises(
            ProtocolViolation, parser.feed, raw + b"3e9\r\n" + b"x" * 1001 + b"\r\n0\r\n\r\n"
        )
        self.assertEqual(violation.status, 413)
        self.assertEqual(len(recorder.heads), 1)
        self.assertNotIn("done", recorder.kinds())

    def test_trailer_section_too_large(self) -> None:
        recorder = RequestRecorder()
        parser = RequestParser(recorder, LIMITS)
        raw = request(H, b"Transfer-Encoding: chunked", start=b"POST / HTTP/1.1")
        violation = self.assertRaises(
            ProtocolViolation, parser.feed, raw + b"1\r\nx\r\n0\r\nT: " + b"v" * 300 + b"\r\n\r\n"
        )
        self.assertEqual(violation.status, 431)
        self.assertEqual(recorder.kinds(), ["head", "body"])


for _name, _raw, _status in REFUSED:
    setattr(RefusalTests, "test_refuses_" + _name, _refusal_test(_raw, _status))
del _name, _raw, _status


#: (name, request bytes, the head's content_length, the body reported). Accepted edge cases,
#: parsed with ``LIMITS`` but for a header section of up to 8 KiB.
ACCEPTED = [
    (
        "content_length_leading_zeros",
        request(H, b"Content-Length: 0005", body=b"hello"),
        5,
        b"hello",
    ),
    (
        "content_length_of_5000_zeros",
        request(H, b"Content-Length: " + b"0" * 4999 + b"5", body=b"hello"),
        5,
        b"hello",
    ),
    (
        "content_length_at_the_cap",
        request(H, b"Content-Length: 1000", body=b"x" * 1000),
        1000,
        b"x" * 1000,
    ),
    ("chunked_any_case", request(H, b"Transfer-Encoding: Chunked", body=b"0\r\n\r\n"), None, b""),
    ("chunk_extensions", request(H, CHUNKED, body=b"3;x=y\r\nabc\r\n0\r\n\r\n"), None, b"abc"),
    ("fields_at_the_limit", request(H, *(b"X-%d: v" % i for i in range(4))), None, b""),
    ("empty_host", request(b"Host: "), None, b""),
    ("host_ipv6_with_port", request(b"Host: [::1]:443"), None, b""),
    ("host_empty_port", request(b"Host: a:"), None, b""),
    ("http10_without_host", request(start=b"GET / HTTP/1.0"), None, b""),
    ("options_asterisk", request(H, start=b"OPTIONS * HTTP/1.1"), None, b""),
]


def _accepted_test(raw: bytes, length: Optional[int], body: bytes) -> Callable[[Any], None]:
    def test(self: SynchronousTestCase) -> None:
        recorder, offset = parse(raw, limits=_ACCEPTED_LIMITS)
        self.assertEqual(recorder.kinds()[0], "head")
        self.assertEqual(recorder.kinds()[-1], "done")
        self.assertEqual(recorder.heads[0].content_length, length)
        self.assertEqual(recorder.body, body)
        self.assertIsNone(offset)

    return test


_ACCEPTED_LIMITS = ServerLimits(
    max_body_bytes=1000, max_request_line_bytes=100, max_header_bytes=8192, max_header_fields=5
)


class AcceptedTests(SynchronousTestCase):
    """Each row of ``ACCEPTED`` is one test, ``test_accepts_<name>``."""


for _name, _raw, _length, _body in ACCEPTED:
    setattr(AcceptedTests, "test_accepts_" + _name, _accepted_test(_raw, _length, _body))
del _name, _raw, _length, _body


class ValidHostTests(SynchronousTestCase):
    VALID = [
        b"example.com",
        b"example.com:8080",
        b"EXAMPLE.com",
        b"127.0.0.1",
        b"127.0.0.1:65535",
        b"[::1]",
        b"[::1]:443",
        b"[fe80::1%25eth0]",
        b"xn--bcher-kva.example",
        b"%41b.example",
        b"a:",
        b"",
    ]
    INVALID = [
        b"a b",
        b"a\x01b",
        b"a\x7f",
        b"a\tb",
        b"[::1",
        b"[::1]x",
        b"[::1]:99999",
        b"[zz::1]",
        b"h:99999",
        b"h:65536",
        b"h:1:2",
        b"h:port",
        b"evil@host",
        b"a/b",
        b"a\\b",
        b"a%zz",
        b"a\x80",
    ]

    def test_valid(self) -> None:
        for host in self.VALID:
            self.assertTrue(valid_host(host), host)

    def test_invalid(self) -> None:
        for host in self.INVALID:
            self.assertFalse(valid_host(host), host)


class RequestHeadTests(SynchronousTestCase):
    def test_origin_form(self) -> None:
        head = head_of(
            request(
                b"Host: example.com:8080", b"X-Name:  spaced \t", start=b"GET /a/b?x=1&y HTTP/1.1"
            )
        )
        self.assertEqual(
            (head.method, head.target, head.version, head.path, head.query, head.authority),
            (b"GET", b"/a/b?x=1&y", b"1.1", b"/a/b", b"x=1&y", b"example.com:8080"),
        )
        self.assertTrue(head.keep_alive)
        self.assertIsNone(head.upgrade)
        self.assertFalse(head.has_body)

    def test_fields_in_order_as_sent(self) -> None:
        """Names keep their case; values lose the surrounding whitespace; repeats stay."""
        head = head_of(request(H, b"X-Two: 1", b"x-two: 2", b"Accept:  */* "))
        self.assertEqual(
            head.fields.pairs,
            [(b"Host", b"example.com"), (b"X-Two", b"1"), (b"x-two", b"2"), (b"Accept", b"*/*")],
        )
        self.assertEqual(head.fields.get_all(b"x-two"), [b"1", b"2"])
        self.assertEqual(head.fields.get(b"x-two"), b"2")

    def test_absolute_form_authority_replaces_host(self) -> None:
        """RFC 9112 3.2.2: the target's authority is the one to route on; the target the
        server sees is origin-form."""
        head = head_of(
            request(b"Host: other.example", start=b"GET http://Api.example:8080/v1/x?q=1 HTTP/1.1")
        )
        self.assertEqual(head.authority, b"Api.example:8080")
        self.assertEqual((head.target, head.path, head.query), (b"/v1/x?q=1", b"/v1/x", b"q=1"))
        self.assertEqual(head.fields.get(b"host"), b"other.example")

    def test_absolute_form_without_path(self) -> None:
        head = head_of(request(H, start=b"GET HTTPS://api.example?q=1 HTTP/1.1"))
        self.assertEqual(head.authority, b"api.example")
        self.assertEqual((head.target, head.path, head.query), (b"/?q=1", b"/", b"q=1"))

    def test_absolute_form_in_http10_without_host(self) -> None:
        head = head_of(request(start=b"GET http://api.example/ HTTP/1.0"))
        self.assertEqual((head.authority, head.target), (b"api.example", b"/"))

    def test_absolute_form_authority_checked(self) -> None:
        parser = RequestParser(RequestRecorder(), LIMITS)
        violation = self.assertRaises(
            ProtocolViolation, parser.feed, request(H, start=b"GET http://a%zz/ HTTP/1.1")
        )
        self.assertEqual(violation.status, 400)

    def test_options_asterisk(self) -> None:
        head = head_of(request(H, start=b"OPTIONS * HTTP/1.1"))
        self.assertEqual((head.target, head.path, head.authority), (b"*", b"*", b"example.com"))

    def test_expect_100_continue(self) -> None:
        head = head_of(
            request(H, b"Expect: 100-Continue", b"Content-Length: 3", start=b"PUT / HTTP/1.1")
        )
        self.assertTrue(head.expect_continue)
        self.assertEqual(head.content_length, 3)
        self.assertTrue(head.has_body)

    def test_expect_other_value(self) -> None:
        head = head_of(request(H, b"Expect: something-else"))
        self.assertFalse(head.expect_continue)

    def test_expect_in_http10_ignored(self) -> None:
        """HTTP/1.0 clients do not know 100 Continue (RFC 9110 10.1.1)."""
        head = head_of(request(b"Expect: 100-continue", start=b"GET / HTTP/1.0"))
        self.assertFalse(head.expect_continue)

    def test_connection_close_among_tokens(self) -> None:
        head = head_of(request(H, b"Connection: close, X-Foo"))
        self.assertFalse(head.keep_alive)
        self.assertEqual(connection_tokens(head.fields), frozenset([b"close", b"x-foo"]))

    def test_connection_close_in_second_field(self) -> None:
        head = head_of(request(H, b"Connection: X-Foo", b"Connection: Close"))
        self.assertFalse(head.keep_alive)

    def test_connection_other_tokens_keep_alive(self) -> None:
        head = head_of(request(H, b"Connection: X-Foo, keep-alive"))
        self.assertTrue(head.keep_alive)

    def test_http10_closes_by_default(self) -> None:
        self.assertFalse(head_of(request(start=b"GET / HTTP/1.0")).keep_alive)

    def test_http10_keep_alive(self) -> None:
        head = head_of(request(b"Connection: Keep-Alive", start=b"GET / HTTP/1.0"))
        self.assertTrue(head.keep_alive)
        self.assertEqual(head.version, b"1.0")

    def test_connection_tokens_empty(self) -> None:
        self.assertEqual(connection_tokens(Fields()), frozenset())
        self.assertEqual(
            connection_tokens(Fields([(b"Connection", b" , ,Upgrade ,")])), frozenset([b"upgrade"])
        )


class UpgradeTests(SynchronousTestCase):
    def test_websocket_upgrade(self) -> None:
        """With ``Connection: upgrade``, parsing stops after the head: ``feed`` says where the
        other protocol's bytes start."""
        raw = request(H, b"Connection: Upgrade", b"Upgrade: WebSocket")
        recorder, offset = parse(raw + b"\x81\x05hello")
        self.assertEqual(recorder.heads[0].upgrade, b"websocket")
        self.assertEqual(offset, len(raw))
        self.assertEqual(recorder.kinds(), ["head", "done"])

    def test_upgrade_among_connection_tokens(self) -> None:
        raw = request(H, b"Connection: keep-alive, Upgrade", b"Upgrade: websocket, h2c")
        recorder, offset = parse(raw)
        self.assertEqual(recorder.heads[0].upgrade, b"websocket")
        self.assertEqual(offset, len(raw))

    def test_upgrade_without_connection_upgrade(self) -> None:
        """An ``Upgrade`` field alone asks nothing: the next bytes are the next request."""
        raw = request(H, b"Upgrade: websocket")
        recorder, offset = parse(raw + raw)
        self.assertIsNone(offset)
        self.assertEqual([head.upgrade for head in recorder.heads], [None, None])

    def test_upgrade_with_empty_body_allowed(self) -> None:
        raw = request(H, b"Connection: upgrade", b"Upgrade: websocket", b"Content-Length: 0")
        recorder, offset = parse(raw)
        self.assertEqual((recorder.heads[0].upgrade, offset), (b"websocket", len(raw)))


class BodyTests(SynchronousTestCase):
    def test_content_length_body(self) -> None:
        recorder, _ = parse(
            request(H, b"Content-Length: 10", start=b"POST / HTTP/1.1", body=b"hello"), b"world"
        )
        self.assertEqual(recorder.kinds(), ["head", "body", "body", "done"])
        self.assertEqual(recorder.body, b"helloworld")

    def test_chunked_body_decoded(self) -> None:
        raw = request(H, b"Transfer-Encoding: chunked", start=b"POST / HTTP/1.1")
        recorder, _ = parse(raw + b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        head = recorder.heads[0]
        self.assertTrue(head.chunked)
        self.assertIsNone(head.content_length)
        self.assertTrue(head.has_body)
        self.assertEqual(recorder.body, b"hello world")
        self.assertEqual(recorder.kinds()[-1], "done")

    def test_trailers_dropped(self) -> None:
        """Trailer fields are counted against the limit, never added to the head."""
        raw = request(H, b"Transfer-Encoding: chunked", start=b"POST / HTTP/1.1")
        recorder, _ = parse(raw + b"1\r\nx\r\n0\r\nX-Trailer: v\r\nHost: evil\r\n\r\n")
        self.assertEqual(recorder.kinds(), ["head", "body", "done"])
        self.assertEqual(
            recorder.heads[0].fields.pairs,
            [(b"Host", b"example.com"), (b"Transfer-Encoding", b"chunked")],
        )

    def test_bad_chunk_size(self) -> None:
        raw = request(H, b"Transfer-Encoding: chunked", start=b"POST / HTTP/1.1")
        parser = RequestParser(RequestRecorder(), LIMITS)
        violation = self.assertRaises(ProtocolViolation, parser.feed, raw + b"zz\r\n")
        self.assertEqual(violation.status, 400)

    def test_pipelined_requests_in_one_feed(self) -> None:
        """httptools cannot pause: one feed reports every request in it, in order."""
        one = request(H, start=b"GET /1 HTTP/1.1")
        two = request(H, b"Content-Length: 2", start=b"POST /2 HTTP/1.1", body=b"ab")
        three = request(H, start=b"GET /3 HTTP/1.1")
        recorder, _ = parse(one + two + three)
        self.assertEqual([head.target for head in recorder.heads], [b"/1", b"/2", b"/3"])
        self.assertEqual(recorder.kinds(), ["head", "done", "head", "body", "done", "head", "done"])

    def test_pipelined_small_requests_over_the_head_limit(self) -> None:
        """Many small pipelined requests in one read, the last one cut short, are not one
        oversized head."""
        limits = ServerLimits(max_header_bytes=1024)
        one = request(H, start=b"GET /x HTTP/1.1")
        recorder, _ = parse(one * 200 + b"GET /y HTTP/1.1\r\nHo", b"st: a\r\n\r\n", limits=limits)
        self.assertEqual(len(recorder.heads), 201)

    def test_body_then_partial_head_over_the_head_limit(self) -> None:
        limits = ServerLimits(max_header_bytes=1024)
        raw = request(H, b"Content-Length: 4000", start=b"POST / HTTP/1.1", body=b"x" * 4000)
        recorder, _ = parse(raw + b"GET / HTTP/1.1\r\n", b"Host: a\r\n\r\n", limits=limits)
        self.assertEqual(len(recorder.heads), 2)

    def test_split_at_every_offset(self) -> None:
        """Where the reads split a request changes nothing of what is reported."""
        raw = (
            request(H, b"Transfer-Encoding: chunked", b"X-A: 1", start=b"POST /p?q HTTP/1.1")
            + b"3;e=1\r\nabc\r\n2\r\nde\r\n0\r\nT: v\r\n\r\n"
            + request(H, start=b"GET /n HTTP/1.1")
        )
        whole, _ = parse(raw)
        expected = ([(h.method, h.target, h.fields.pairs) for h in whole.heads], whole.body)
        for cut in range(1, len(raw)):
            recorder, _ = parse(raw[:cut], raw[cut:])
            got = ([(h.method, h.target, h.fields.pairs) for h in recorder.heads], recorder.body)
            self.assertEqual(got, expected, cut)
        recorder, _ = parse(*(raw[i : i + 1] for i in range(len(raw))))
        self.assertEqual(len(recorder.heads), 2)
        self.assertEqual(recorder.body, b"abcde")


class ResponseRecorder:
    """The client protocol's side of a ResponseParser."""

    def __init__(self) -> None:
        self.events: List[Tuple[str, Any]] = []

    def response_begin(self) -> None:
        self.events.append(("begin", None))

    def response_head(self, head: ResponseHead, keep_alive: bool) -> None:
        self.events.append(("head", (head, keep_alive)))

    def response_body(self, data: bytes) -> None:
        self.events.append(("body", data))

    def response_done(self) -> None:
        self.events.append(("done", None))

    def heads(self) -> List[ResponseHead]:
        return [value[0] for kind, value in self.events if kind == "head"]


def parse_response(
    *reads: bytes, limits: Optional[ClientLimits] = None
) -> Tuple[ResponseRecorder, Optional[int]]:
    recorder = ResponseRecorder()
    parser = ResponseParser(recorder, limits or ClientLimits())
    offset = None
    for data in reads:
        offset = parser.feed(data)
    return recorder, offset


class ResponseParserTests(SynchronousTestCase):
    def test_fixed_length(self) -> None:
        recorder, _ = parse_response(
            b"HTTP/1.1 201 Made It\r\nContent-Length: 5\r\nX-A:  b \r\n\r\nhel", b"lo"
        )
        head, keep_alive = recorder.events[1][1]
        self.assertEqual((head.status, head.reason, head.version), (201, b"Made It", b"1.1"))
        self.assertEqual(head.fields.pairs, [(b"Content-Length", b"5"), (b"X-A", b"b")])
        self.assertEqual((head.content_length, head.chunked, keep_alive), (5, False, True))
        self.assertEqual(
            [kind for kind, _ in recorder.events], ["begin", "head", "body", "body", "done"]
        )

    def test_chunked_last_coding(self) -> None:
        recorder, _ = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        )
        head = recorder.heads()[0]
        self.assertTrue(head.chunked)
        self.assertIsNone(head.content_length)
        self.assertEqual(b"".join(v for k, v in recorder.events if k == "body"), b"abc")

    def test_connection_close(self) -> None:
        recorder, _ = parse_response(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nabc")
        self.assertFalse(recorder.events[1][1][1])

    def test_interim_then_final(self) -> None:
        recorder, _ = parse_response(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
        )
        self.assertEqual([head.status for head in recorder.heads()], [100, 200])

    def test_switching_protocols_offset(self) -> None:
        head = (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"
        )
        recorder, offset = parse_response(head + b"\x81\x00")
        self.assertEqual(offset, len(head))
        self.assertEqual(recorder.heads()[0].status, 101)

    def test_content_length_of_5000_zeros(self) -> None:
        recorder, _ = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: " + b"0" * 5000 + b"3\r\n\r\nabc"
        )
        self.assertEqual(recorder.heads()[0].content_length, 3)

    def test_malformed(self) -> None:
        for raw in (
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTX/1.1 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        ):
            parser = ResponseParser(ResponseRecorder(), ClientLimits())
            violation = self.assertRaises(ProtocolViolation, parser.feed, raw)
            self.assertEqual(violation.status, 502, raw)

    def test_too_many_fields(self) -> None:
        parser = ResponseParser(ResponseRecorder(), ClientLimits(max_header_fields=2))
        violation = self.assertRaises(
            ProtocolViolation, parser.feed, b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n"
        )
        self.assertEqual(violation.status, 502)

    def test_never_ending_head(self) -> None:
        limits = ClientLimits(max_header_bytes=100, max_status_line_bytes=50)
        parser = ResponseParser(ResponseRecorder(), limits)
        parser.feed(b"HTTP/1.1 200 OK\r\nX: ")
        violation = self.assertRaises(ProtocolViolation, parser.feed, b"v" * 200)
        self.assertEqual(violation.status, 502)
