"""Plugins through a real gateway and upstream on 127.0.0.1: every phase, onion order, isolation,
metrics, reload. The plugins are registered in-process (``plugins.register``); the packaged
example distribution is tested through a real venv in test_plugin_distribution.py."""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred, gatherResults
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher
from twisted.web.resource import Resource

from avx_twisted import plugins
from avx_twisted.demo import EchoResource
from tests.support.process import free_port
from tests.support.servers import FnResource, gateway, http, upstream

ensure = pytest_twisted.ensureDeferred
SEEN: list[tuple[str, str]] = []


class Mark:
    """Adds ``X-Mark: <name>`` upstream and ``X-Mark-Back: <name>`` to the response; records
    the order of its phases in SEEN."""

    api_version = 1

    def __init__(self, config: plugins.PluginConfig) -> None:
        self.name = config.str("name")
        self.delay = config.float("delay", 0.0)

    def on_request(self, request: Any, ctx: Any) -> Any:
        SEEN.append(("request", self.name))
        ctx.state.setdefault("marks", []).append(self.name)
        request.headers.add("X-Mark", self.name)
        if self.delay:
            return deferLater(reactor, self.delay, lambda: None)
        return None

    def on_response(self, response: Any, ctx: Any) -> None:
        SEEN.append(("response", self.name))
        response.headers.add("X-Mark-Back", self.name)
        response.headers.set("X-Marks-Seen", ",".join(ctx.state["marks"]))


class Deny:
    api_version = 1

    def __init__(self, config: plugins.PluginConfig) -> None:
        self.header = config.header("header")

    def on_request(self, request: Any, ctx: Any) -> Any:
        if self.header in request.headers:
            return plugins.error(403, "forbidden header", ctx)
        return None


class Boom:
    api_version = 1

    def __init__(self, config: plugins.PluginConfig) -> None:
        self.phase = config.str(
            "phase", choices=("request", "deferred", "upstream", "response", "body", "log", "error")
        )

    def on_request(self, request: Any, ctx: Any) -> Any:
        if self.phase == "request":
            raise RuntimeError("secret internals of the plugin")
        if self.phase == "deferred":
            return deferLater(reactor, 0, lambda: 1 / 0)
        return None

    def on_upstream_request(self, request: Any, ctx: Any) -> None:
        if self.phase == "upstream":
            raise RuntimeError("secret internals of the plugin")

    def on_response(self, response: Any, ctx: Any) -> None:
        if self.phase == "response":
            raise RuntimeError("secret internals of the plugin")

    def on_response_body(self, data: bytes, last: bool, ctx: Any) -> bytes:
        if self.phase == "body" and last:
            raise RuntimeError("secret internals of the plugin")
        return data

    def on_log(self, ctx: Any, summary: dict[str, Any]) -> None:
        if self.phase == "log":
            raise RuntimeError("secret internals of the plugin")

    def on_error(self, ctx: Any, error: str) -> None:
        if self.phase == "error":
            raise RuntimeError("secret internals of the plugin")


class Waits:
    """Uses ``ctx.clock`` to wait a little (callLater) and ``ctx.log`` to say so."""

    api_version = 1
    clocks: list[Any] = []

    def __init__(self, config: plugins.PluginConfig) -> None:
        pass

    def on_request(self, request: Any, ctx: Any) -> Any:
        Waits.clocks.append(ctx.clock)
        asked = ctx.clock.seconds()
        done: Deferred[None] = Deferred()

        def later() -> None:
            request.headers.set("X-Waited", "yes")
            ctx.log.info(
                "waited for {path} since {asked}",
                path=request.path,
                asked=asked,
                request_id=ctx.request_id,
            )
            done.callback(None)

        ctx.clock.callLater(0.01, later)
        return done


class SeenResource(Resource):
    """A resource route's answer: the X-Mark header it was given; records each call."""

    isLeaf = True
    calls: list[str] = []

    def render_GET(self, request: Any) -> bytes:
        SeenResource.calls.append(request.uri.decode())
        request.setHeader(b"Content-Type", b"text/plain")
        return b"resource saw X-Mark=" + (request.getHeader(b"x-mark") or b"-")


seen_resource = SeenResource()


class Rewrite:
    """Sends every try to ``/rewritten`` with a header naming the target it goes to."""

    api_version = 1

    def __init__(self, config: plugins.PluginConfig) -> None:
        pass

    def on_upstream_request(self, request: Any, ctx: Any) -> None:
        request.headers.set("X-Upstream-Url", request.url)
        request.headers.set("X-Route-Param", ctx.params.get("id", "-"))
        request.target = "/rewritten?was=" + request.target.lstrip("/")


class Upper:
    """Upper-cases the response body, streamed or (``buffer``) whole."""

    api_version = 1

    def __init__(self, config: plugins.PluginConfig) -> None:
        self.response_body_buffer = config.int("buffer", 0)
        self.calls = 0

    def on_response_body(self, data: bytes, last: bool, ctx: Any) -> bytes:
        self.calls += 1
        if self.response_body_buffer:
            return b"<" + data.upper() + b">" if last else data
        return data.upper()


class SideCall:
    """Asks ``url`` (a policy service) with ``ctx.http`` before letting a request go on."""

    api_version = 1

    def __init__(self, config: plugins.PluginConfig) -> None:
        self.url = config.str("url")

    def on_request(self, request: Any, ctx: Any) -> Any:
        d = ctx.http.get(self.url + "/allow?user=" + ctx.client_ip)

        def decided(response: Any) -> Any:
            return response.content().addCallback(
                lambda body: None if body == b"yes" else plugins.error(403, "denied", ctx)
            )

        return d.addCallback(decided)


class Recorder:
    api_version = 1
    logged: list[dict[str, Any]] = []
    errors: list[str] = []

    def __init__(self, config: plugins.PluginConfig) -> None:
        pass

    def on_log(self, ctx: Any, summary: dict[str, Any]) -> None:
        Recorder.logged.append(summary)

    def on_error(self, ctx: Any, error: str) -> None:
        Recorder.errors.append(error)


@pytest.fixture(autouse=True)
def registered():
    factories = [
        ("mark", Mark),
        ("mark2", Mark),
        ("deny", Deny),
        ("boom", Boom),
        ("rewrite", Rewrite),
        ("upper", Upper),
        ("recorder", Recorder),
        ("side-call", SideCall),
        ("waits", Waits),
    ]
    for name, factory in factories:
        plugins.register(name, factory)
    SEEN.clear()
    Recorder.logged.clear()
    Recorder.errors.clear()
    Waits.clocks.clear()
    SeenResource.calls.clear()
    yield
    for name, _ in factories:
        plugins.unregister(name)


@pytest.fixture
def events():
    """Every event logged while the test runs (the in-process gateway logs here)."""
    logged: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(logged.append)
    yield logged
    globalLogPublisher.removeObserver(logged.append)


async def scrape(gw) -> dict[tuple[str, str, str], float]:
    """The gateway's plugin series from a real /metrics scrape: (sample, plugin, phase) ->
    value."""
    response = await http("GET", f"http://127.0.0.1:{gw.port}/metrics")
    text = (await response.content()).decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("avx_plugin_") and "le" not in sample.labels:
                found[(sample.name, sample.labels["plugin"], sample.labels["phase"])] = sample.value
    return found


def gw_for(closer, url: str, route_plugins: list, global_plugins: list = (), **route: Any):
    return closer.add(
        gateway(
            {
                "server": {"host": "127.0.0.1", "port": 0},
                "plugins": {"global": list(global_plugins)},
                "routes": [
                    {"name": "plain", "path": "/plain/*", "upstream": {"urls": [url]}},
                    {
                        "name": "api",
                        "path": "/api/{id}/*",
                        "plugins": route_plugins,
                        "upstream": {"urls": [url]},
                        **route,
                    },
                ],
            }
        )
    )


async def call(gw, method: str, path: str, **kw):
    response = await http(method, f"http://127.0.0.1:{gw.port}{path}", **kw)
    return response, await response.content()


def mark(name: str, **config: Any) -> dict[str, Any]:
    return {"name": "mark", "config": {"name": name, **config}}


@ensure
async def test_request_phases_in_order_response_phases_in_reverse(closer):
    up = closer.add(upstream(EchoResource("svc")))
    gw = gw_for(
        closer,
        up.url,
        [
            {"name": "mark2", "config": {"name": "route", "delay": 0.01}},
            {"name": "deny", "config": {"header": "X-Nope"}},
        ],
        global_plugins=[mark("global"), {"name": "recorder"}],
    )
    response, body = await call(gw, "GET", "/api/7/x")
    assert response.code == 200
    assert json.loads(body)["headers"]["X-Mark"] == ["global", "route"]
    assert response.headers.getRawHeaders("x-mark-back") == ["route", "global"]
    assert response.headers.getRawHeaders("x-marks-seen") == ["global,route"]
    assert SEEN == [
        ("request", "global"),
        ("request", "route"),
        ("response", "route"),
        ("response", "global"),
    ]
    # A short-circuit goes back through the response phases of the plugins before it.
    SEEN.clear()
    response, body = await call(gw, "GET", "/api/7/x", headers={"X-Nope": "1"})
    assert response.code == 403
    assert json.loads(body)["error"] == "forbidden header"
    assert response.headers.getRawHeaders("x-mark-back") == ["route", "global"]
    # Global plugins run on every route; on_log sees every request.
    SEEN.clear()
    assert (await call(gw, "GET", "/plain/x"))[0].code == 200
    assert SEEN == [("request", "global"), ("response", "global")]
    assert [r["route"] for r in Recorder.logged] == ["api", "api", "plain"]
    assert [r["status"] for r in Recorder.logged] == [200, 403, 200]


@ensure
async def test_global_plugins_run_before_the_routes_own(closer):
    up = closer.add(upstream(EchoResource("svc")))
    gw = closer.add(
        gateway(
            {
                "server": {"host": "127.0.0.1", "port": 0},
                "plugins": {"global": [{"name": "mark", "config": {"name": "global"}}]},
                "routes": [
                    {"path": "/*", "plugins": [{"name": "upper"}], "upstream": {"urls": [up.url]}},
                ],
            }
        )
    )
    response, body = await call(gw, "GET", "/x")
    assert response.code == 200
    assert b'"X-MARK": [' in body  # upper-cased by the route's plugin, marked by the global one
    assert SEEN == [("request", "global"), ("response", "global")]


@ensure
async def test_exceptions_answer_500_and_never_leak(closer):
    up = closer.add(upstream(EchoResource("svc")))
    for phase in ("request", "deferred", "upstream", "response"):
        gw = gw_for(closer, up.url, [{"name": "boom", "config": {"phase": phase}}])
        response, body = await call(gw, "GET", "/api/1/x")
        assert response.code == 500, phase
        assert b"secret" not in body
        assert json.loads(body)["error"] == "internal error"
        # The gateway and its other routes go on.
        assert (await call(gw, "GET", "/plain/x"))[0].code == 200
        _, text = await call(gw, "GET", "/metrics")
        families = {f.name: f for f in text_string_to_metric_families(text.decode())}
        errors = {
            (s.labels["plugin"], s.labels["phase"]): s.value
            for s in families["avx_plugin_errors"].samples
        }
        want = {
            "request": "request",
            "deferred": "request",
            "upstream": "upstream_request",
            "response": "response",
        }[phase]
        assert errors[("boom", want)] == 1, errors


@ensure
async def test_a_failing_body_plugin_cuts_the_response(closer):
    up = closer.add(upstream(EchoResource("svc")))
    gw = gw_for(closer, up.url, [{"name": "boom", "config": {"phase": "body"}}])
    with pytest.raises(Exception):  # noqa: B017 - the client sees a broken response
        response = await http("GET", f"http://127.0.0.1:{gw.port}/api/1/x")
        await response.content()


@ensure
async def test_a_failing_log_plugin_changes_nothing(closer, events):
    up = closer.add(upstream(EchoResource("svc")))
    gw = gw_for(
        closer, up.url, [{"name": "recorder"}, {"name": "boom", "config": {"phase": "log"}}]
    )
    for _ in range(2):
        response, body = await call(gw, "GET", "/api/1/x")
        assert response.code == 200 and json.loads(body)["uri"] == "/api/1/x"
    # Logged with the plugin's name and the request, counted; the next plugin's on_log ran.
    failures = [e for e in events if e.get("log_format") == "plugin {plugin} failed in on_log"]
    assert [e["plugin"] for e in failures] == ["boom", "boom"]
    assert all(e["log_failure"].check(RuntimeError) for e in failures)
    assert [r["request_id"] for r in Recorder.logged] == [
        e["request_id"].decode() for e in failures
    ]
    values = await scrape(gw)
    assert values[("avx_plugin_calls_total", "boom", "log")] == 2
    assert values[("avx_plugin_errors_total", "boom", "log")] == 2
    assert values[("avx_plugin_errors_total", "recorder", "log")] == 0


@ensure
async def test_a_failing_error_plugin_is_isolated(closer, events):
    dead = f"http://127.0.0.1:{free_port()}"
    gw = gw_for(
        closer, dead, [{"name": "recorder"}, {"name": "boom", "config": {"phase": "error"}}]
    )
    response, body = await call(gw, "GET", "/api/1/x")
    # The answer is the gateway's usual one, and the other plugin's on_error still ran.
    assert response.code == 502
    assert json.loads(body)["error"] == "upstream unavailable"
    assert b"secret" not in body
    assert Recorder.errors == ["upstream unavailable"]
    failures = [e for e in events if e.get("log_format") == "plugin {plugin} failed in on_error"]
    assert [e["plugin"] for e in failures] == ["boom"]
    values = await scrape(gw)
    assert values[("avx_plugin_calls_total", "boom", "error")] == 1
    assert values[("avx_plugin_errors_total", "boom", "error")] == 1
    # A request without an error calls no on_error; the gateway goes on.
    assert (await call(gw, "GET", "/metrics"))[0].code == 200
    assert (await scrape(gw))[("avx_plugin_calls_total", "boom", "error")] == 1


@ensure
async def test_calls_and_durations_per_plugin_and_phase_in_a_real_scrape(closer):
    up = closer.add(upstream(EchoResource("svc")))
    gw = gw_for(closer, up.url, [mark("route"), {"name": "rewrite"}])
    for _ in range(3):
        assert (await call(gw, "GET", "/api/1/x"))[0].code == 200
    values = await scrape(gw)
    for plugin, phase in [
        ("mark", "request"),
        ("mark", "response"),
        ("rewrite", "upstream_request"),
    ]:
        assert values[("avx_plugin_calls_total", plugin, phase)] == 3, (plugin, phase)
        assert values[("avx_plugin_errors_total", plugin, phase)] == 0
        assert values[("avx_plugin_duration_seconds_count", plugin, phase)] == 3
        assert values[("avx_plugin_duration_seconds_sum", plugin, phase)] >= 0
    # Only implemented phases have series at all.
    assert {(p, ph) for (_, p, ph) in values} == {
        ("mark", "request"),
        ("mark", "response"),
        ("rewrite", "upstream_request"),
    }


@ensure
async def test_ctx_clock_and_ctx_log(closer, events):
    up = closer.add(upstream(EchoResource("svc")))
    gw = gw_for(closer, up.url, [{"name": "waits"}])
    response, body = await call(gw, "GET", "/api/1/x", headers={"X-Request-ID": "clock-1"})
    assert response.code == 200
    # The header was set in the callLater'd function, before the request went on upstream.
    assert json.loads(body)["headers"]["X-Waited"] == ["yes"]
    assert Waits.clocks == [reactor]
    [said] = [e for e in events if e.get("log_format") == "waited for {path} since {asked}"]
    assert said["log_namespace"] == "avx_twisted.plugins"
    assert said["path"] == "/api/1/x" and said["request_id"] == "clock-1"
    assert isinstance(said["asked"], float)


@ensure
async def test_upstream_request_phase_changes_target_and_headers(closer):
    up = closer.add(upstream(EchoResource("svc")))
    gw = gw_for(closer, up.url, [{"name": "rewrite"}], strip_path=True)
    response, body = await call(gw, "GET", "/api/42/thing?q=1")
    echoed = json.loads(body)
    assert echoed["uri"] == "/rewritten?was=thing?q=1"
    assert echoed["headers"]["X-Upstream-Url"] == [up.url]
    assert echoed["headers"]["X-Route-Param"] == ["42"]


@ensure
async def test_response_body_streamed_and_buffered(closer):
    big = b"abcdefgh" * (128 * 1024)  # 1 MiB, in many chunks
    up = closer.add(upstream(FnResource(lambda r: big)))
    gw = gw_for(closer, up.url, [{"name": "upper"}])
    response, body = await call(gw, "GET", "/api/1/x")
    assert response.code == 200 and body == big.upper()
    assert response.headers.getRawHeaders("content-length") is None  # length may change
    gw2 = gw_for(closer, up.url, [{"name": "upper", "config": {"buffer": 2 * len(big)}}])
    response, body = await call(gw2, "GET", "/api/1/x")
    assert body == b"<" + big.upper() + b">"
    # Over the cap the body passes that plugin unchanged (and it is counted).
    gw3 = gw_for(closer, up.url, [{"name": "upper", "config": {"buffer": 1000}}])
    response, body = await call(gw3, "GET", "/api/1/x")
    assert response.code == 200 and body == big
    response, _ = await call(gw3, "HEAD", "/api/1/x")
    assert response.code == 200
    # The body over the cap is counted as an error of the phase (and the plugin was never
    # called: it would have wrapped the body in <>); a HEAD calls nothing.
    values = await scrape(gw3)
    assert values[("avx_plugin_errors_total", "upper", "response_body")] == 1
    assert values[("avx_plugin_calls_total", "upper", "response_body")] == 0


@ensure
async def test_plugins_run_before_a_resource_route_answers(closer):
    gw = closer.add(
        gateway(
            {
                "server": {"host": "127.0.0.1", "port": 0},
                "routes": [
                    {
                        "name": "res",
                        "path": "/res/*",
                        "resource": "tests.integration.test_plugins:seen_resource",
                        "plugins": [
                            mark("first"),
                            {"name": "deny", "config": {"header": "X-Nope"}},
                        ],
                    }
                ],
            }
        )
    )
    # A header-setting plugin's change is what the resource sees.
    response, body = await call(gw, "GET", "/res/a")
    assert response.code == 200, body
    assert body == b"resource saw X-Mark=first"
    assert SeenResource.calls == ["/res/a"]
    # A plugin's short-circuit answers, and the resource never runs.
    response, body = await call(gw, "GET", "/res/b", headers={"X-Nope": "1"})
    assert response.code == 403
    assert json.loads(body)["error"] == "forbidden header"
    assert SeenResource.calls == ["/res/a"]
    # As documented, the resource's own answer skips on_response; the short-circuit does not.
    assert SEEN == [("request", "first"), ("request", "first"), ("response", "first")]


class Tag:
    """Records the X-T values each request reaches it with, then adds its own; ``deny``: answers
    403 instead (after ``delay`` seconds); its response phase marks what went through it."""

    api_version = 1
    calls: list[tuple[str, list[str]]] = []

    def __init__(self, config: plugins.PluginConfig) -> None:
        self.deny = config.bool("deny", False)
        self.delay = config.float("delay", 0.0)

    def on_request(self, request: Any, ctx: Any) -> Any:
        Tag.calls.append((request.path, request.headers.get_all("X-T")))
        request.headers.add("X-T", "plugin")
        if not self.deny:
            return None
        answer = plugins.error(403, "denied by the plugin", ctx)
        return deferLater(reactor, self.delay, lambda: answer)

    def on_response(self, response: Any, ctx: Any) -> None:
        response.headers.set("X-Tagged", "yes")


def ordered_gateway(closer, url: str, tmp_path, **route: Any):
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object", "required": ["name"]}))
    return closer.add(
        gateway(
            {
                "server": {"host": "127.0.0.1", "port": 0},
                "routes": [
                    {
                        "name": "ordered",
                        "path": "/o/*",
                        "plugins": [{"name": "tag", "config": route.pop("tag", {})}],
                        "validate": {"request_schema": str(schema)},
                        "request": {"set_headers": {"X-T": "transform"}},
                        "upstream": {"urls": [url]},
                        **route,
                    }
                ],
            }
        )
    )


@ensure
async def test_validation_and_request_transforms_run_before_the_plugins(closer, tmp_path):
    """The order on a route: filters, validation, request transforms, cache lookup, plugins."""
    up = closer.add(upstream(EchoResource("svc")))
    plugins.register("tag", Tag)
    Tag.calls.clear()
    try:
        gw = ordered_gateway(closer, up.url, tmp_path)
        json_type = {"Content-Type": "application/json"}
        response, body = await call(gw, "POST", "/o/a", data=b'{"x": 1}', headers=json_type)
        assert response.code == 400, body  # refused by the schema: the plugin never saw it
        assert Tag.calls == []
        assert response.headers.getRawHeaders("x-tagged") == [
            "yes"
        ]  # the answer went out through it
        response, body = await call(gw, "POST", "/o/b", data=b'{"name": "n"}', headers=json_type)
        assert response.code == 200, body
        # The transform's value was set before the plugin saw the request and added its own.
        assert Tag.calls == [("/o/b", ["transform"])]
        assert json.loads(body)["headers"]["X-T"] == ["transform", "plugin"]
    finally:
        plugins.unregister("tag")


@ensure
async def test_a_cache_hit_never_reaches_the_plugins(closer, tmp_path):
    origin = FnResource(lambda request: _cacheable(request, b"stored"))
    up = closer.add(upstream(origin))
    plugins.register("tag", Tag)
    Tag.calls.clear()
    try:
        gw = ordered_gateway(closer, up.url, tmp_path, cache={})
        first, body = await call(gw, "GET", "/o/c")
        assert first.code == 200 and body == b"stored"
        assert first.headers.getRawHeaders("cache-status")[0].endswith("stored")
        second, body = await call(gw, "GET", "/o/c")
        assert second.code == 200 and body == b"stored"
        assert second.headers.getRawHeaders("cache-status")[0].startswith("avx; hit")
        assert Tag.calls == [("/o/c", ["transform"])]  # the miss only
        assert len(origin.seen) == 1
        # What the plugins' response phases did to the answer is what the cache keeps.
        assert second.headers.getRawHeaders("x-tagged") == ["yes"]
    finally:
        plugins.unregister("tag")


@ensure
async def test_a_plugin_answer_on_a_cache_miss_is_not_stored_and_frees_the_waiters(
    closer, tmp_path
):
    """Requests collapsed behind a miss whose plugin answers go on at once (not after the
    route's 30 s lock timeout), each through the plugins itself; nothing is stored."""
    origin = FnResource(lambda request: _cacheable(request, b"never"))
    up = closer.add(upstream(origin))
    plugins.register("tag", Tag)
    Tag.calls.clear()
    try:
        gw = ordered_gateway(
            closer,
            up.url,
            tmp_path,
            tag={"deny": True, "delay": 0.3},
            cache={"lock_timeout_ms": 30000},
        )
        started = reactor.seconds()
        answers = await gatherResults([ensureDeferred(call(gw, "GET", "/o/d")) for _ in range(5)])
        assert [r.code for r, _ in answers] == [403] * 5
        assert all(json.loads(b)["error"] == "denied by the plugin" for _, b in answers)
        assert reactor.seconds() - started < 10  # the waiters did not sit out the lock timeout
        assert len(Tag.calls) == 5 and origin.seen == []
        response, _ = await call(gw, "GET", "/o/d")
        assert response.code == 403  # not answered from the cache
        assert len(Tag.calls) == 6
    finally:
        plugins.unregister("tag")


def _cacheable(request: Any, body: bytes) -> bytes:
    request.setHeader(b"Cache-Control", b"max-age=600")
    request.setHeader(b"Content-Type", b"text/plain")
    return body


@ensure
async def test_on_log_and_on_error(closer):
    dead = f"http://127.0.0.1:{free_port()}"
    gw = gw_for(closer, dead, [{"name": "recorder"}])
    response, _ = await call(gw, "GET", "/api/1/x")
    assert response.code == 502
    assert Recorder.errors == ["upstream unavailable"]
    summary = Recorder.logged[0]
    assert summary["status"] == 502 and summary["route"] == "api"
    assert summary["error"] == "upstream unavailable"


@ensure
async def test_reload_swaps_plugin_configs_or_keeps_the_running_ones(closer, tmp_path):
    from twisted.internet import reactor as r

    from avx_twisted.config import GatewayConfig
    from avx_twisted.service import GatewayService

    up = closer.add(upstream(EchoResource("svc")))
    path = tmp_path / "gw.toml"

    def write(config: str) -> None:
        path.write_text(f"""
[server]
host = "127.0.0.1"
port = 0
[[routes]]
path = "/*"
plugins = [{config}]
[routes.upstream]
urls = ["{up.url}"]
""")

    write('{ name = "mark", config = { name = "one" } }')
    gw = closer.add(GatewayService(GatewayConfig.load(str(path)), r))
    gw.startService()
    _, body = await call(gw, "GET", "/x")
    assert json.loads(body)["headers"]["X-Mark"] == ["one"]
    write('{ name = "mark", config = { name = "two" } }')
    assert gw.reload()
    _, body = await call(gw, "GET", "/x")
    assert json.loads(body)["headers"]["X-Mark"] == ["two"]
    write('{ name = "mark", config = { name = 3 } }')
    assert not gw.reload()  # refused atomically: the running plugins stay
    _, body = await call(gw, "GET", "/x")
    assert json.loads(body)["headers"]["X-Mark"] == ["two"]


@ensure
async def test_a_side_call_through_ctx_http(closer):
    answers = {"yes": b"yes"}
    policy = closer.add(upstream(FnResource(lambda r: answers["yes"])))
    up = closer.add(upstream(EchoResource("svc")))
    gw = gw_for(closer, up.url, [{"name": "side-call", "config": {"url": policy.url}}])
    assert (await call(gw, "GET", "/api/1/x"))[0].code == 200
    answers["yes"] = b"no"
    response, body = await call(gw, "GET", "/api/1/x")
    assert response.code == 403 and json.loads(body)["error"] == "denied"
