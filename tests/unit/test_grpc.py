"""gRPC's rules without sockets: deadlines, status, the gateway's errors as gRPC, the health
check's messages."""

from __future__ import annotations

from avx_twisted import grpc
from avx_twisted.errors import error_answer
from avx_twisted.h1 import Fields


def test_a_call_is_known_by_its_content_type():
    assert grpc.is_call(Fields([(b"content-type", b"application/grpc")]))
    assert grpc.is_call(Fields([(b"content-type", b"application/grpc+proto")]))
    assert not grpc.is_call(Fields([(b"content-type", b"application/json")]))
    assert not grpc.is_call(Fields())


def test_timeouts_in_every_unit_and_malformed_ones():
    assert grpc.timeout_s(b"300m") == 0.3
    assert grpc.timeout_s(b"2S") == 2.0
    assert grpc.timeout_s(b"1H") == 3600.0
    assert grpc.timeout_s(b"5M") == 300.0
    assert abs(grpc.timeout_s(b"1500u") - 0.0015) < 1e-12
    assert abs(grpc.timeout_s(b"100n") - 100e-9) < 1e-15
    for bad in (b"", b"10", b"m", b"10x", b"123456789S", b"-1S", b"1.5S"):
        assert grpc.timeout_s(bad) is None, bad


def test_the_deadline_is_the_clients_capped_by_the_routes():
    fields = Fields([(b"grpc-timeout", b"5S")])
    assert grpc.deadline_s(fields, None) == 5.0
    assert grpc.deadline_s(fields, 0.3) == 0.3
    assert grpc.deadline_s(Fields([(b"grpc-timeout", b"100m")]), 0.3) == 0.1
    assert grpc.deadline_s(Fields(), None) is None  # no deadline at all
    assert grpc.deadline_s(Fields(), 2.0) == 2.0


def test_service_and_method_of_a_path():
    assert grpc.service_method(b"/pkg.Echo/Unary") == ("pkg.Echo", "Unary")
    assert grpc.service_method(b"/nope") == (None, None)
    assert grpc.service_method(b"/a/b/c") == (None, None)


def test_gateway_errors_become_trailers_only_answers():
    cases = {401: 16, 403: 7, 429: 8, 504: 4, 502: 14, 503: 14, 404: 12, 500: 13, 413: 8}
    for status, code in cases.items():
        answer = error_answer(status, "why not", [(b"Retry-After", b"3")], b"rid")
        got, fields = grpc.answer_fields(answer.status, answer.fields, answer.message)
        assert got == code, status
        as_dict = dict(fields)
        assert as_dict[b"content-type"] == b"application/grpc"
        assert as_dict[b"grpc-status"] == b"%d" % code
        assert as_dict[b"grpc-message"] == b"why not"
        assert as_dict[b"Retry-After"] == b"3"
        assert b"Cache-Control" not in as_dict


def test_grpc_message_is_percent_encoded():
    (status, message) = grpc.trailers(14, "upstream 100% down\n")
    assert message == (b"grpc-message", b"upstream 100%25 down%0A")


class Request:
    """What Answer.send needs of a request."""

    def __init__(self, content_type: bytes) -> None:
        self.fields = Fields([(b"content-type", content_type)])
        self.context = None
        self.sent: tuple = ()

    def respond(self, status, fields=(), body=b""):
        self.sent = (status, list(fields), body)


def test_an_error_answer_to_a_grpc_call_is_grpc_and_to_others_json():
    answer = error_answer(401, "missing credentials")
    call = Request(b"application/grpc")
    answer.send(call)
    status, fields, body = call.sent
    assert (status, body) == (200, b"")
    assert (b"grpc-status", b"16") in fields
    plain = Request(b"application/json")
    answer.send(plain)
    assert plain.sent[0] == 401 and b"missing credentials" in plain.sent[2]


def test_health_messages():
    assert grpc.health_request("") == b"\x00\x00\x00\x00\x00"
    assert grpc.health_request("test.Echo") == b"\x00\x00\x00\x00\x0b\x0a\x09test.Echo"
    assert grpc.health_status(b"\x00\x00\x00\x00\x02\x08\x01") == grpc.SERVING
    assert grpc.health_status(b"\x00\x00\x00\x00\x02\x08\x02") == 2  # NOT_SERVING
    assert grpc.health_status(b"\x00\x00\x00\x00\x00") == 0  # proto3 default: UNKNOWN
    # An unknown length-delimited field before the status is skipped.
    assert grpc.health_status(b"\x00\x00\x00\x00\x05\x12\x01x\x08\x01") == grpc.SERVING
    for bad in (
        b"",
        b"\x01\x00\x00\x00\x00",
        b"\x00\x00\x00\x00\x05\x08",
        b"\x00\x00\x00\x00\x01\x0f",
    ):
        assert grpc.health_status(bad) is None, bad


def test_method_labels_past_the_cap_count_as_other():
    """The client names the methods: past 256 per route new ones are ``other`` (never an
    error: the 257th once recursed until RecursionError)."""
    from prometheus_client import CollectorRegistry

    from avx_twisted.metrics import GatewayMetrics

    route = GatewayMetrics(CollectorRegistry()).route("r")
    for n in range(256):
        route.grpc("svc", f"M{n}", "OK")[0].inc()
    route.grpc("svc", "M0", "INTERNAL")[0].inc()  # a known method, another status
    route.grpc("svc", "M256", "OK")[0].inc()
    route.grpc("svc", "M257", "UNAVAILABLE")[0].inc()
    other_ok, other_unavailable = (
        route.grpc("other", "other", "OK"),
        route.grpc("other", "other", "UNAVAILABLE"),
    )
    assert other_ok[0]._value.get() == 1
    assert other_unavailable[0]._value.get() == 1
    assert route.grpc("svc", "M0", "INTERNAL")[0]._value.get() == 1
