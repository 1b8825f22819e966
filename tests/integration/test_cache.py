"""The response cache through the real gateway (in-process) against a counting origin: hits,
Vary, conditional requests, revalidation, stale-while-revalidate, stale-if-error,
invalidation, collapsing, HEAD and ranges, Cache-Status, metrics and the access log."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest_twisted
from twisted.internet import defer, reactor, task
from twisted.web.server import NOT_DONE_YET

from tests.support.servers import FnResource, gateway, http, upstream

ensure = pytest_twisted.ensureDeferred


class Origin:
    """Answers ``/any?cc=...&etag=...&vary=...&status=...&delay=...`` with those fields and a
    body naming how many requests it has seen for that path."""

    def __init__(self) -> None:
        self.count: dict[bytes, int] = {}
        self.fail = False
        self.resource = FnResource(self.render)

    def render(self, request: Any) -> Any:
        path = request.path
        n = self.count[path] = self.count.get(path, 0) + 1
        args = {k.decode(): v[0].decode() for k, v in request.args.items()}
        if self.fail:
            request.setResponseCode(503)
            return b"down"
        if "cc" in args:
            request.setHeader(b"Cache-Control", args["cc"].encode())
        if "vary" in args:
            request.setHeader(b"Vary", args["vary"].encode())
        etag = args.get("etag")
        if etag:
            request.setHeader(b"ETag", b'"%s"' % etag.encode())
            if request.getHeader(b"if-none-match") == b'"%s"' % etag.encode():
                request.setResponseCode(304)
                return b""
        if "cookie" in args:
            request.setHeader(b"Set-Cookie", b"a=b")
        request.setResponseCode(int(args.get("status", "200")))
        lang = request.getHeader(b"accept-language") or b"-"
        body = b"%s #%d lang=%s" % (path, n, lang)
        if request.method in (b"POST", b"PUT", b"DELETE"):
            return b"done"
        delay = float(args.get("delay", "0"))
        if delay:

            def later() -> None:
                request.write(body)
                request.finish()

            reactor.callLater(delay, later)
            return NOT_DONE_YET
        return body


def cached_gateway(closer: Any, origin: Origin, **route_cache: Any) -> tuple[Any, str]:
    up = closer.add(upstream(origin.resource))
    service = gateway(
        {
            "server": {"host": "127.0.0.1", "port": 0},
            "routes": [
                {
                    "path": "/*",
                    "upstream": {"urls": [f"http://127.0.0.1:{up.port}"]},
                    "cache": route_cache,
                }
            ],
        }
    )
    closer.add(service)
    return service, f"http://127.0.0.1:{service.ports[0].getHost().port}"


async def get(url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    response = await http(
        "GET", url, headers={k.replace("_", "-"): [v] for k, v in headers.items()}
    )
    body = await response.content()
    fields = {k.decode().lower(): v[-1].decode() for k, v in response.headers.getAllRawHeaders()}
    return response.code, fields, body


@ensure
async def test_a_fresh_entry_is_served_with_age_and_cache_status(closer):
    origin = Origin()
    gw, base = cached_gateway(closer, origin)
    status, fields, body = await get(f"{base}/a?cc=max-age%3D60")
    assert (status, body) == (200, b"/a #1 lang=-")
    assert fields["cache-status"] == "avx; fwd=uri-miss; stored"
    status, fields, body = await get(f"{base}/a?cc=max-age%3D60")
    assert (status, body) == (200, b"/a #1 lang=-")
    assert fields["cache-status"].startswith("avx; hit; ttl=")
    assert int(fields["age"]) >= 0
    assert origin.count[b"/a"] == 1


@ensure
async def test_what_must_not_be_stored_is_not(closer):
    origin = Origin()
    gw, base = cached_gateway(closer, origin)
    for query in ("cc=no-store", "cc=private%2C%20max-age%3D60", "cc=max-age%3D60&cookie=1", ""):
        path = f"/n{len(query)}"
        await get(f"{base}{path}?{query}")
        status, fields, body = await get(f"{base}{path}?{query}")
        assert body.endswith(b"#2 lang=-"), query
        assert "stored" not in fields["cache-status"], query


@ensure
async def test_vary_keeps_one_entry_per_variant(closer):
    origin = Origin()
    gw, base = cached_gateway(closer, origin)
    url = f"{base}/v?cc=max-age%3D60&vary=Accept-Language"
    assert (await get(url, accept_language="fr"))[2] == b"/v #1 lang=fr"
    status, fields, body = await get(url, accept_language="de")
    assert body == b"/v #2 lang=de"
    assert fields["cache-status"] == "avx; fwd=vary-miss; stored"
    assert (await get(url, accept_language="fr"))[2] == b"/v #1 lang=fr"
    assert (await get(url, accept_language="de"))[2] == b"/v #2 lang=de"
    star = f"{base}/s?cc=max-age%3D60&vary=*"
    await get(star)
    assert (await get(star))[2] == b"/s #2 lang=-"  # Vary: * is never served from the cache


@ensure
async def test_conditional_requests_and_revalidation(closer):
    origin = Origin()
    gw, base = cached_gateway(closer, origin)
    url = f"{base}/e?cc=max-age%3D3&etag=v1"
    await get(url)
    # The client's own conditional GET is answered 304 from the fresh entry.
    status, fields, body = await get(url, if_none_match='"v1"')
    assert (status, body) == (304, b"")
    assert origin.count[b"/e"] == 1
    # Once stale, the gateway revalidates with its validator; the origin's 304 refreshes the
    # entry and the client gets the whole stored response.
    await task.deferLater(reactor, 3.2, lambda: None)  # stale, with room for the hit after
    status, fields, body = await get(url)
    assert (status, body) == (200, b"/e #1 lang=-")
    assert origin.count[b"/e"] == 2
    assert "revalidated" in fields["cache-status"]
    status, fields, body = await get(url)
    assert "hit" in fields["cache-status"]
    assert origin.count[b"/e"] == 2


@ensure
async def test_request_directives(closer):
    origin = Origin()
    gw, base = cached_gateway(closer, origin)
    url = f"{base}/d?cc=max-age%3D60"
    await get(url)
    assert (await get(url, cache_control="no-cache"))[2] == b"/d #2 lang=-"
    assert (await get(url, cache_control="max-age=0"))[2] == b"/d #3 lang=-"
    status, _, body = await get(f"{base}/absent?cc=max-age%3D60", cache_control="only-if-cached")
    assert status == 504
    assert origin.count.get(b"/absent") is None


@ensure
async def test_stale_while_revalidate_answers_at_once_and_refreshes(closer):
    origin = Origin()
    gw, base = cached_gateway(closer, origin)
    url = f"{base}/w?cc=max-age%3D1%2C%20stale-while-revalidate%3D30"
    await get(url)
    await task.deferLater(reactor, 1.2, lambda: None)
    status, fields, body = await get(url)
    assert body == b"/w #1 lang=-"  # stale, at once
    assert "stale" in fields["cache-status"]
    for _ in range(50):
        if origin.count[b"/w"] == 2:
            break
        await task.deferLater(reactor, 0.05, lambda: None)
    assert origin.count[b"/w"] == 2  # one background refresh
    assert (await get(url))[2] == b"/w #2 lang=-"


@ensure
async def test_stale_if_error_covers_an_origin_failure(closer):
    origin = Origin()
    gw, base = cached_gateway(closer, origin, stale_if_error_s=60)
    url = f"{base}/f?cc=max-age%3D1"
    await get(url)
    await task.deferLater(reactor, 1.2, lambda: None)
    origin.fail = True
    status, fields, body = await get(url)
    assert (status, body) == (200, b"/f #1 lang=-")
    assert "stale-if-error" in fields["cache-status"]
    # must-revalidate forbids it, whatever the route says.
    origin.fail = False
    strict = f"{base}/g?cc=max-age%3D1%2C%20must-revalidate"
    await get(strict)
    await task.deferLater(reactor, 1.2, lambda: None)
    origin.fail = True
    assert (await get(strict))[0] == 503


@ensure
async def test_unsafe_requests_invalidate(closer):
    origin = Origin()
    gw, base = cached_gateway(closer, origin)
    url = f"{base}/i?cc=max-age%3D60"
    await get(url)
    assert (await get(url))[2] == b"/i #1 lang=-"
    response = await http("POST", url, data=b"x")
    await response.content()
    assert response.code == 200
    assert (await get(url))[2] == b"/i #3 lang=-"  # the POST was #2


@ensure
async def test_concurrent_misses_collapse_into_one_upstream_request(closer):
    origin = Origin()
    gw, base = cached_gateway(closer, origin)
    url = f"{base}/slow?cc=max-age%3D60&delay=1"
    answers = await defer.gatherResults(
        [defer.Deferred.fromCoroutine(get(url)) for _ in range(200)]
    )
    assert {body for _, _, body in answers} == {b"/slow #1 lang=-"}
    assert origin.count[b"/slow"] == 1


@ensure
async def test_uncacheable_answers_release_waiters_at_once(closer):
    origin = Origin()
    gw, base = cached_gateway(closer, origin)
    url = f"{base}/u?cc=no-store&delay=0.3"
    answers = await defer.gatherResults([defer.Deferred.fromCoroutine(get(url)) for _ in range(5)])
    assert len({body for _, _, body in answers}) == 5  # each went upstream itself


@ensure
async def test_head_and_ranges_from_a_stored_entry(closer):
    origin = Origin()
    gw, base = cached_gateway(closer, origin)
    url = f"{base}/r?cc=max-age%3D60"
    await get(url)
    response = await http("HEAD", url)
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-length") == [b"12"]
    assert origin.count[b"/r"] == 1
    status, fields, body = await get(url, range="bytes=0-1")
    assert (status, body) == (206, b"/r")
    assert fields["content-range"] == "bytes 0-1/12"
    status, fields, body = await get(url, range="bytes=-3")
    assert (status, body) == (206, b"g=-")
    status, fields, body = await get(url, range="bytes=50-")
    assert status == 416
    assert origin.count[b"/r"] == 1


@ensure
async def test_metrics_and_access_log_say_what_the_cache_did(closer, tmp_path):
    origin = Origin()
    log = tmp_path / "access.log"
    up = closer.add(upstream(origin.resource))
    service = gateway(
        {
            "server": {"host": "127.0.0.1", "port": 0},
            "logging": {"access_log": str(log)},
            "routes": [
                {
                    "path": "/*",
                    "name": "cached",
                    "upstream": {"urls": [f"http://127.0.0.1:{up.port}"]},
                    "cache": {},
                }
            ],
        }
    )
    closer.add(service)
    base = f"http://127.0.0.1:{service.ports[0].getHost().port}"
    await get(f"{base}/m?cc=max-age%3D60")
    await get(f"{base}/m?cc=max-age%3D60")
    _, _, scrape = await get(f"{base}/metrics")
    text = scrape.decode()
    assert 'avx_cache_requests_total{result="miss",route="cached"} 1.0' in text
    assert 'avx_cache_requests_total{result="hit",route="cached"} 1.0' in text
    assert "avx_cache_entries 1.0" in text
    service.access_writer.stop()
    service.access_writer = None
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["cache"] for r in records if r["path"] == "/m"] == ["miss", "hit"]


def _gateway_with(
    closer: Any, origin_port: int, route_cache: dict[str, Any] | None = None, **top: Any
) -> tuple[Any, str]:
    """A gateway with one cached route ``cached`` (``route_cache``: its [routes.cache]) and
    the top-level tables ``top`` ([cache], [admin], ...)."""
    config = {
        "server": {"host": "127.0.0.1", "port": 0},
        "routes": [
            {
                "path": "/*",
                "name": "cached",
                "upstream": {"urls": [f"http://127.0.0.1:{origin_port}"]},
                "cache": route_cache or {},
            }
        ],
        **top,
    }
    service = gateway(config)
    closer.add(service)
    return service, f"http://127.0.0.1:{service.ports[0].getHost().port}"


TOKEN = "cache-admin-token"


async def purge(service: Any, payload: Any) -> tuple[int, Any]:
    port = service.admin_ports[0].getHost().port
    response = await http(
        "POST",
        f"http://127.0.0.1:{port}/cache/purge",
        headers={"Authorization": f"Bearer {TOKEN}"},
        data=json.dumps(payload).encode(),
    )
    return response.code, json.loads(await response.content())


@ensure
async def test_admin_purge_by_url_prefix_and_route(closer):
    origin = Origin()
    up = closer.add(upstream(origin.resource))
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    admin = {"listen": "tcp:0:interface=127.0.0.1", "token_sha256": digest}
    service, base = _gateway_with(closer, up.port, admin=admin)
    host = base.split("//")[1]
    for path in ("/p/a", "/p/b", "/q"):
        await get(f"{base}{path}?cc=max-age%3D60", accept_language="fr")
    assert await purge(service, {"url": f"http://{host}/q?cc=max-age%3D60"}) == (200, {"purged": 1})
    assert (await get(f"{base}/q?cc=max-age%3D60"))[2].startswith(b"/q #2")
    assert await purge(service, {"prefix": "/p/"}) == (200, {"purged": 2})
    assert (await get(f"{base}/p/a?cc=max-age%3D60"))[2].startswith(b"/p/a #2")
    assert await purge(service, {"route": "cached"}) == (200, {"purged": 2})
    status, body = await purge(service, {"route": "nope"})
    assert status == 404
    status, body = await purge(service, {"prefix": "no-slash"})
    assert status == 400 and "prefix" in body["error"]


@ensure
async def test_admin_purge_by_url_reaches_every_key_of_a_key_headers_route(closer):
    """With ``key_headers`` the keys carry header values no one can list: a URL purge takes
    every key of that URI (each tenant's copy), not the ones of its neighbours."""
    origin = Origin()
    up = closer.add(upstream(origin.resource))
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    admin = {"listen": "tcp:0:interface=127.0.0.1", "token_sha256": digest}
    service, base = _gateway_with(closer, up.port, {"key_headers": ["X-Tenant"]}, admin=admin)
    host = base.split("//")[1]
    url = f"{base}/k?cc=max-age%3D60"
    for tenant in ("a", "b"):
        await get(url, x_tenant=tenant)
    await get(url)
    await get(f"{base}/kk?cc=max-age%3D60", x_tenant="a")
    assert (await get(url, x_tenant="a"))[2] == b"/k #1 lang=-"  # stored per tenant
    assert await purge(service, {"url": f"http://{host}/k?cc=max-age%3D60"}) == (200, {"purged": 3})
    assert (await get(url, x_tenant="b"))[2] == b"/k #4 lang=-"  # fetched again
    assert (await get(f"{base}/kk?cc=max-age%3D60", x_tenant="a"))[2] == b"/kk #1 lang=-"


@ensure
async def test_status_header_can_be_turned_off(closer):
    origin = Origin()
    up = closer.add(upstream(origin.resource))
    service, base = _gateway_with(closer, up.port, cache={"status_header": False})
    await get(f"{base}/h?cc=max-age%3D60")
    status, fields, body = await get(f"{base}/h?cc=max-age%3D60")
    assert body == b"/h #1 lang=-"  # a hit
    assert "cache-status" not in fields


@ensure
async def test_a_body_over_max_object_bytes_is_relayed_whole_and_not_stored(closer):
    big = b"B" * 5000

    def render(request: Any) -> bytes:
        request.setHeader(b"Cache-Control", b"max-age=60")
        # Chunked (no Content-Length): the size is known only as it streams.
        request.write(big[:2000])
        request.write(big[2000:])
        request.finish()
        return NOT_DONE_YET

    up = closer.add(upstream(FnResource(render)))
    service, base = _gateway_with(closer, up.port, route_cache={"max_object_bytes": 4096})
    for _ in range(2):
        status, fields, body = await get(f"{base}/big")
        assert (status, body) == (200, big)
    assert len(up.site.resource.seen) == 2


@ensure
async def test_a_broken_off_body_is_never_stored(closer):
    calls = []

    def render(request: Any) -> Any:
        calls.append(1)
        request.setHeader(b"Cache-Control", b"max-age=60")
        request.setHeader(b"Content-Length", b"100")
        request.write(b"x" * 10)
        request.transport.abortConnection()
        return NOT_DONE_YET

    up = closer.add(upstream(FnResource(render)))
    service, base = _gateway_with(closer, up.port)
    for _ in range(2):
        try:
            await get(f"{base}/cut")
        except Exception:
            pass  # the client connection is cut: never a truncated answer that looks complete
    assert len(calls) == 2


@ensure
async def test_the_redis_store_is_shared_by_replicas_and_its_outage_only_uncaches(closer, tmp_path):
    from tests.support.redis import RedisServer

    redis = RedisServer(tmp_path).start()
    closer.add(redis)
    origin = Origin()
    up = closer.add(upstream(origin.resource))
    store = {"backend": "redis", "redis_url": redis.url}
    one, base_one = _gateway_with(closer, up.port, cache=store)
    two, base_two = _gateway_with(closer, up.port, cache=store)
    # Behind one load balancer both replicas see the same Host.
    await get(f"{base_one}/shared?cc=max-age%3D60", host="api.test")
    for _ in range(50):  # the first replica's write to Redis is not awaited by its client
        if await one.runtime.cache_store.get(b"http://api.test/shared?cc=max-age%3D60"):
            break
        await task.deferLater(reactor, 0.02, lambda: None)
    status, fields, body = await get(f"{base_two}/shared?cc=max-age%3D60", host="api.test")
    assert body == b"/shared #1 lang=-"
    assert fields["cache-status"].startswith("avx; hit")
    redis.stop()
    status, fields, body = await get(f"{base_one}/down?cc=max-age%3D60")
    assert (status, body) == (200, b"/down #1 lang=-")
    status, fields, body = await get(f"{base_one}/down?cc=max-age%3D60")
    assert (status, body) == (200, b"/down #2 lang=-")  # uncached, never failed
