"""JSON body transforms, without sockets."""

from __future__ import annotations

import gzip
import json

from avx_twisted.compression import _brotli
from avx_twisted.json_transform import JsonRules, is_json, plan_response

RULES = JsonRules(
    remove=["password", "items.secret"],
    rename=[("userName", "user_name"), ("meta.v", "version")],
    set_values=[("meta.source", "gateway"), ("flags.new.deep", [1, 2])],
)


def test_remove_then_rename_then_set_on_dotted_paths_and_arrays():
    doc = {
        "password": "hunter2",
        "userName": "ann",
        "items": [{"id": 1, "secret": "x"}, {"id": 2}],
        "meta": {"v": 3},
    }
    assert RULES.apply(doc) == {
        "user_name": "ann",
        "items": [{"id": 1}, {"id": 2}],
        "meta": {"version": 3, "source": "gateway"},
        "flags": {"new": {"deep": [1, 2]}},
    }


def test_a_body_that_is_not_json_is_left_as_it_is():
    assert RULES.transform(b"not json") is None
    assert RULES.transform(b"\xff\xfe") is None
    assert json.loads(RULES.transform(b'{"password": 1}')) == {
        "meta": {"source": "gateway"},
        "flags": {"new": {"deep": [1, 2]}},
    }
    # Top-level arrays and scalars: paths apply to each element / nothing.
    assert json.loads(JsonRules(remove=["a"]).transform(b'[{"a":1,"b":2},3]')) == [{"b": 2}, 3]


def test_json_content_types():
    assert is_json(b"application/json; charset=utf-8")
    assert is_json(b"application/problem+json")
    assert not is_json(b"text/json-ish")
    assert not is_json(None)


def run(transform, chunks):
    out = b"".join(transform.data(c) for c in chunks)
    return out + transform.end()


def test_a_response_is_changed_at_its_end_with_new_framing():
    fields = [
        (b"Content-Type", b"application/json"),
        (b"Content-Length", b"40"),
        (b"ETag", b'"x"'),
    ]
    transform, out = plan_response(JsonRules(remove=["a"]), b"GET", 200, fields)
    assert dict(out) == {b"Content-Type": b"application/json", b"ETag": b'W/"x"'}
    assert run(transform, [b'{"a": 1,', b' "b": 2}']) == b'{"b":2}'


def test_compressed_upstream_bodies_are_decoded_first():
    for encoding, data in (
        (b"gzip", gzip.compress(b'{"a":1,"b":2}')),
        (b"br", _brotli.compress(b'{"a":1,"b":2}')),
    ):
        fields = [(b"Content-Type", b"application/json"), (b"Content-Encoding", encoding)]
        transform, out = plan_response(JsonRules(remove=["a"]), b"GET", 200, fields)
        assert b"Content-Encoding" not in dict(out)
        assert run(transform, [data[:5], data[5:]]) == b'{"b":2}'
    fields = [(b"Content-Type", b"application/json"), (b"Content-Encoding", b"zstd")]
    assert plan_response(JsonRules(remove=["a"]), b"GET", 200, fields)[0] is None


def test_larger_or_invalid_bodies_go_on_unchanged_and_say_why():
    rules = JsonRules(remove=["a"], max_bytes=10)
    transform, _ = plan_response(rules, b"GET", 200, [(b"Content-Type", b"application/json")])
    body = b'{"a": 1, "padding": "xxxxxxxx"}'
    assert run(transform, [body[:8], body[8:]]) == body
    assert transform.skipped == "too_large"
    transform, _ = plan_response(
        JsonRules(remove=["a"]), b"GET", 200, [(b"Content-Type", b"application/json")]
    )
    assert run(transform, [b"{oops"]) == b"{oops"
    assert transform.skipped == "not_json"


def test_what_is_not_planned():
    json_type = [(b"Content-Type", b"application/json")]
    for method, status, fields in (
        (b"HEAD", 200, json_type),
        (b"GET", 204, json_type),
        (b"GET", 304, json_type),
        (b"GET", 200, [(b"Content-Type", b"text/html")]),
    ):
        assert plan_response(RULES, method, status, fields)[0] is None
