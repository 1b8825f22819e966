"""Response compression's choices and encoders, without sockets."""

from __future__ import annotations

import gzip
import zlib

import pytest

from avx_twisted.compression import CompressionPolicy, Compressor, _brotli, add_vary, choose
from avx_twisted.h1 import Fields

POLICY = CompressionPolicy(("br", "gzip"), 100, ("text/*", "application/json"))
JSON = [(b"Content-Type", b"application/json; charset=utf-8")]


def plan(accept: bytes | None, fields=JSON, status=200, length=1000, method=b"GET"):
    request = Fields([(b"Accept-Encoding", accept)] if accept is not None else [])
    return POLICY.plan(method, request, status, list(fields), length)


@pytest.mark.parametrize(
    "accept,chosen",
    [
        ([b"gzip, br"], b"br"),  # a tie: the route's order
        ([b"gzip;q=1, br;q=0.5"], b"gzip"),
        ([b"br;q=0, gzip"], b"gzip"),
        ([b"identity"], None),
        ([b"*"], b"br"),
        ([b"*;q=0.1, br;q=0"], b"gzip"),
        ([b"GZIP"], b"gzip"),
        ([b"gzip;q=abc"], None),
        ([], None),
        ([b"deflate", b"gzip"], b"gzip"),  # two field lines
    ],
)
def test_accept_encoding_q_values(accept, chosen):
    assert choose(accept, (b"br", b"gzip")) == chosen


def test_a_compressed_answer_loses_its_length_and_has_a_weak_etag():
    encoding, fields = plan(b"gzip", JSON + [(b"Content-Length", b"1000"), (b"ETag", b'"v1"')])
    assert encoding == b"gzip"
    as_dict = dict(fields)
    assert b"Content-Length" not in as_dict
    assert as_dict[b"ETag"] == b'W/"v1"'
    assert as_dict[b"Content-Encoding"] == b"gzip"
    assert as_dict[b"Vary"] == b"Accept-Encoding"


@pytest.mark.parametrize(
    "fields,status,length,method",
    [
        ([(b"Content-Type", b"image/png")], 200, 1000, b"GET"),  # not one of the route's types
        (JSON + [(b"Content-Encoding", b"br")], 200, 1000, b"GET"),  # already encoded
        (JSON + [(b"Cache-Control", b"public, no-transform")], 200, 1000, b"GET"),
        (JSON, 200, 99, b"GET"),  # below min_bytes
        (JSON, 204, None, b"GET"),
        (JSON, 206, 1000, b"GET"),
        (JSON, 304, None, b"GET"),
        (JSON, 200, 1000, b"HEAD"),
        (JSON, 200, 0, b"GET"),
    ],
)
def test_what_is_never_compressed(fields, status, length, method):
    assert plan(b"gzip", fields, status, length, method)[0] is None


def test_compressible_answers_vary_even_when_this_client_takes_none():
    encoding, fields = plan(None)
    assert encoding is None
    assert (b"Vary", b"Accept-Encoding") in fields
    assert plan(b"gzip", fields=[(b"Content-Type", b"text/html")], length=None)[0] == b"gzip"


def test_vary_is_merged_once_and_star_left_alone():
    assert add_vary([(b"Vary", b"Origin")], b"Accept-Encoding") == [
        (b"Vary", b"Origin, Accept-Encoding")
    ]
    assert add_vary([(b"Vary", b"accept-encoding")], b"Accept-Encoding") == [
        (b"Vary", b"accept-encoding")
    ]
    assert add_vary([(b"Vary", b"*")], b"Accept-Encoding") == [(b"Vary", b"*")]


@pytest.mark.parametrize("encoding", [b"gzip", b"br"])
def test_streamed_bodies_decode_to_the_original(encoding):
    body = b"".join(b'{"n": %d, "text": "lorem ipsum"}\n' % i for i in range(5000))
    compressor = Compressor(encoding)
    parts = [compressor.data(body[i : i + 7000]) for i in range(0, len(body), 7000)]
    assert all(parts)  # each chunk flushed: a streamed answer keeps flowing
    out = b"".join(parts) + compressor.finish()
    assert len(out) < len(body) // 5
    decoded = gzip.decompress(out) if encoding == b"gzip" else _brotli.decompress(out)
    assert decoded == body
    assert (compressor.bytes_in, compressor.bytes_out) == (len(body), len(out))


def test_a_flushed_gzip_prefix_is_readable_before_the_end():
    compressor = Compressor(b"gzip")
    first = compressor.data(b"event: one\n\n")
    reader = zlib.decompressobj(31)
    assert reader.decompress(first) == b"event: one\n\n"
