"""Running the plugins of a route: each phase's implementations bound once per runtime, called in
onion order with isolation, timing and counting. The API plugins see is :mod:`avx_twisted.plugins`.

A route without plugins has no chain (``RuntimeRoute.plugins is None``): nothing here runs and
nothing is allocated for its requests. With a chain, only implemented phases are called.

When the request's trace is sampled (``ctx.trace.sampled``), each call of ``on_request``,
``on_upstream_request`` and ``on_response`` is an INTERNAL child span of the SERVER span
(``plugin <name> <phase>``; ``tracing.RequestTrace.start_plugin_phase``). Without tracing, or for
an unsampled request, that costs one attribute read per phase run.
"""

from __future__ import annotations

import time
from typing import Any, Callable, List, Optional, Sequence, Tuple

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from .errors import Answer, error_answer
from .h1 import Fields
from .plugins import Request, Response, UpstreamRequest

Pair = Tuple[bytes, bytes]

log = Logger(namespace="avx_twisted.plugins")


class PluginFailed(Exception):
    """A plugin raised in a phase before the response started: the request is answered 500."""


class PluginContext:
    """The ``ctx`` every phase of one request gets: who asked, where it goes, a dict for the
    plugins' own state, a Logger, the clock and a pooled HTTP client (treq) for side calls."""

    __slots__ = ("_ctx", "route", "params", "state", "log", "clock", "_clients")

    def __init__(self, ctx: Any, route: str, clock: Any, clients: Any) -> None:
        self._ctx = ctx
        #: The route's name, and the values of its ``{param}`` segments.
        self.route = route
        self.params: dict[str, str] = ctx.params or {}
        #: Per request, shared by the request's plugins (namespace your keys).
        self.state: dict[str, Any] = {}
        self.log = log
        #: The reactor (IReactorTime and more): ``callLater``, ``seconds``.
        self.clock = clock
        self._clients = clients

    @property
    def request_id(self) -> str:
        return self._ctx.request_id.decode("latin-1")  # type: ignore[no-any-return]

    @property
    def client_ip(self) -> str:
        """The client's address (behind ``trusted_proxies``: the forwarded one)."""
        return self._ctx.client_ip  # type: ignore[no-any-return]

    @property
    def identity(self) -> Any:
        """What authentication found (``method``, ``name``, ``claims``, ``scopes``), or None."""
        return self._ctx.identity

    @property
    def tls(self) -> Any:
        """The connection's TLS facts (``tls.TlsInfo``: ``version``, ``cipher``,
        ``server_name``, ``alpn``, ``client_cert``), or None on cleartext."""
        return self._ctx.tls

    @property
    def http(self) -> Any:
        """A ``treq.HTTPClient`` on the gateway's background connection pool (side calls)."""
        return self._clients.http_client()


def _sampled(ctx: Any) -> Any:
    """The request's trace if its spans are recorded, else None."""
    trace = ctx.trace
    if trace is not None and trace.sampled:
        return trace
    return None


def _end_span(result: Any, span: Any) -> Any:
    span.end(result.value if isinstance(result, Failure) else None)
    return result


class _Phase:
    """One plugin's implementation of one phase, with its metrics children."""

    __slots__ = ("plugin", "phase", "fn", "calls", "errors", "duration")

    def __init__(self, plugin: str, fn: Callable[..., Any], metrics: Any, phase: str) -> None:
        self.plugin = plugin
        self.phase = phase
        self.fn = fn
        if metrics is not None:
            self.calls, self.errors, self.duration = metrics.plugin_phase(plugin, phase)
        else:
            self.calls = self.errors = self.duration = None

    def call(self, *args: Any) -> Any:
        """Call it, counted and timed; exceptions go to the caller (counted)."""
        calls = self.calls
        if calls is None:
            return self.fn(*args)
        calls.inc()
        started = time.perf_counter()
        try:
            return self.fn(*args)
        except BaseException:
            self.errors.inc()
            raise
        finally:
            self.duration.observe(time.perf_counter() - started)

    def traced(self, trace: Any, *args: Any) -> Any:
        """:meth:`call` as a child span of ``trace``'s SERVER span, ended when the call returns
        or, for a Deferred, when it fires."""
        span = trace.start_plugin_phase(self.plugin, self.phase)
        try:
            result = self.call(*args)
        except BaseException as e:
            span.end(e)
            raise
        if isinstance(result, Deferred):
            result.addBoth(_end_span, span)
        else:
            span.end()
        return result

    def failed(self) -> None:
        if self.errors is not None:
            self.errors.inc()


class PluginChain:
    """The plugins of one route (``[plugins] global`` first, then the route's), by phase."""

    def __init__(
        self, refs: Sequence[Any], route: str, clock: Any, clients: Any, metrics: Any = None
    ) -> None:
        self.route = route
        self.clock = clock
        self.clients = clients

        def bound(phase: str) -> List[_Phase]:
            return [
                _Phase(ref.name, getattr(ref.instance, phase), metrics, phase)
                for ref in refs
                if callable(getattr(ref.instance, phase, None))
            ]

        self.request = bound("on_request")
        self.upstream = bound("on_upstream_request")
        # Response phases unwind the onion: the last plugin sees the response first.
        self.responses = bound("on_response")[::-1]
        self.body = bound("on_response_body")[::-1]
        self.body_caps = {
            id(phase): int(getattr(ref.instance, "response_body_buffer", 0) or 0)
            for phase in self.body
            for ref in refs
            if ref.name == phase.plugin
        }
        self.logs = bound("on_log")[::-1]
        self.errors = bound("on_error")[::-1]

    def context(self, ctx: Any) -> PluginContext:
        """The request's plugin context (made on first use, kept on the RequestContext)."""
        pctx = ctx.plugin
        if pctx is None:
            pctx = ctx.plugin = PluginContext(ctx, self.route, self.clock, self.clients)
        return pctx

    # -- on_request: a filter of the route, after the built-in ones ------------------------------

    def __call__(self, request: Any, ctx: Any) -> Any:
        """The route filter running every ``on_request`` (a Filter: None, Answer or Deferred)."""
        return self._request_from(0, None, request, ctx)

    def _request_from(self, start: int, _: Any, request: Any, ctx: Any) -> Any:
        pctx = self.context(ctx)
        view = Request(request, ctx)
        phases = self.request
        trace = _sampled(ctx)
        for index in range(start, len(phases)):
            phase = phases[index]
            try:
                if trace is None:
                    result = phase.call(view, pctx)
                else:
                    result = phase.traced(trace, view, pctx)
            except Exception:
                return self._failed(phase, "on_request", Failure(), ctx)
            if result is None:
                continue
            if isinstance(result, Deferred):
                return result.addCallbacks(
                    self._resumed,
                    self._deferred_failed,
                    (index, request, ctx),
                    None,
                    (phase, ctx),
                    None,
                )
            if isinstance(result, Answer):
                return result
            log.error(
                "plugin {plugin} on_request returned {kind}, not None, an answer or a Deferred",
                plugin=phase.plugin,
                kind=type(result).__name__,
                request_id=ctx.request_id,
            )
            phase.failed()
            return error_answer(500, "internal error", request_id=ctx.request_id)
        return None

    def _resumed(self, result: Any, index: int, request: Any, ctx: Any) -> Any:
        if result is None:
            return self._request_from(index + 1, None, request, ctx)
        if isinstance(result, Answer):
            return result
        return error_answer(500, "internal error", request_id=ctx.request_id)

    def _deferred_failed(self, failure: Failure, phase: _Phase, ctx: Any) -> Answer:
        phase.failed()
        return self._failed(phase, "on_request", failure, ctx)

    def _failed(self, phase: _Phase, name: str, failure: Failure, ctx: Any) -> Answer:
        log.failure(
            "plugin {plugin} failed in {phase}",
            failure,
            plugin=phase.plugin,
            phase=name,
            request_id=ctx.request_id,
        )
        ctx.error = f"plugin {phase.plugin} failed in {name}"
        return error_answer(500, "internal error", request_id=ctx.request_id)

    # -- on_upstream_request ----------------------------------------------------------------

    def upstream_request(
        self, method: bytes, url: str, target: bytes, fields: List[Pair], ctx: Any
    ) -> Tuple[bytes, List[Pair]]:
        """Let every ``on_upstream_request`` change one try's target and fields; raises
        :class:`PluginFailed` (logged) when one fails."""
        pctx = self.context(ctx)
        holder = Fields(fields)
        view = UpstreamRequest(method.decode("latin-1"), url, target.decode("latin-1"), holder)
        trace = _sampled(ctx)
        for phase in self.upstream:
            try:
                if trace is None:
                    phase.call(view, pctx)
                else:
                    phase.traced(trace, view, pctx)
            except Exception:
                self._failed(phase, "on_upstream_request", Failure(), ctx)
                raise PluginFailed(phase.plugin) from None
        try:
            new_target = view.target.encode("latin-1")
        except (AttributeError, UnicodeEncodeError):
            new_target = b""
        if not new_target.startswith(b"/") or any(c in new_target for c in b" \r\n\0#"):
            log.error(
                "plugin set an invalid upstream target {target!r}",
                target=view.target,
                request_id=ctx.request_id,
            )
            raise PluginFailed("on_upstream_request")
        return new_target, holder.pairs

    # -- on_response ------------------------------------------------------------------------

    def response(self, status: int, fields: List[Pair], ctx: Any) -> Tuple[int, List[Pair]]:
        """Let every ``on_response`` change the answer's status and fields (raises
        :class:`PluginFailed` when one fails)."""
        pctx = self.context(ctx)
        holder = Fields(fields)
        view = Response(status, holder)
        trace = _sampled(ctx)
        for phase in self.responses:
            try:
                if trace is None:
                    phase.call(view, pctx)
                else:
                    phase.traced(trace, view, pctx)
            except Exception:
                self._failed(phase, "on_response", Failure(), ctx)
                raise PluginFailed(phase.plugin) from None
        status = view.status
        if not isinstance(status, int) or not 100 <= status <= 599 or 100 <= status < 200:
            log.error("a plugin set the invalid status {status!r}", status=status)
            raise PluginFailed("on_response")
        return status, holder.pairs

    def answer(self, answer: Answer, ctx: Any) -> Answer:
        """A short-circuit of this route (a filter's, a plugin's, the gateway's error) through
        the response phases; a failing plugin makes it the gateway's 500."""
        if not self.responses:
            return answer
        try:
            status, fields = self.response(answer.status, list(answer.fields), ctx)
        except PluginFailed:
            return error_answer(500, "internal error", request_id=ctx.request_id)
        return Answer(status, fields, answer.body)

    # -- on_response_body -------------------------------------------------------------------

    def body_transform(self, ctx: Any) -> BodyTransform:
        return BodyTransform(self, self.context(ctx), ctx)

    # -- after the response -------------------------------------------------------------------

    def finished(self, ctx: Any, summary: Callable[[], dict[str, Any]]) -> None:
        """``on_log`` with the access record's fields, then ``on_error`` if it was an error;
        exceptions are logged and counted, nothing else."""
        if not self.logs and not (self.errors and ctx.error is not None):
            return
        pctx = self.context(ctx)
        if self.logs:
            record = summary()
            for phase in self.logs:
                try:
                    phase.call(pctx, record)
                except Exception:
                    log.failure(
                        "plugin {plugin} failed in on_log",
                        plugin=phase.plugin,
                        request_id=ctx.request_id,
                    )
        if self.errors and ctx.error is not None:
            for phase in self.errors:
                try:
                    phase.call(pctx, ctx.error)
                except Exception:
                    log.failure(
                        "plugin {plugin} failed in on_error",
                        plugin=phase.plugin,
                        request_id=ctx.request_id,
                    )


class BodyTransform:
    """One response body through every ``on_response_body``: streamed chunk by chunk, or
    buffered whole for a plugin with ``response_body_buffer`` (over its cap the body passes that
    plugin unchanged, counted as an error of the phase)."""

    def __init__(self, chain: PluginChain, pctx: PluginContext, ctx: Any) -> None:
        self.ctx = ctx
        self.pctx = pctx
        self.stages = [(phase, chain.body_caps.get(id(phase), 0)) for phase in chain.body]
        #: Per buffering stage: the bytes held, or None once over the cap.
        self.held: dict[int, Optional[List[bytes]]] = {}
        self.sizes: dict[int, int] = {}

    def data(self, chunk: bytes) -> bytes:
        """Transform one chunk (raises :class:`PluginFailed`)."""
        return self._run(chunk, False)

    def end(self) -> bytes:
        """The last bytes (what buffering stages held, transformed)."""
        return self._run(b"", True)

    def _run(self, data: bytes, last: bool) -> bytes:
        for index, (phase, cap) in enumerate(self.stages):
            if not data and not last:
                break  # an earlier stage holds the body
            if cap:
                held = self.held.get(index, [])
                if held is None:  # over the cap: this plugin lets it through as is
                    continue
                size = self.sizes.get(index, 0) + len(data)
                if size > cap:
                    self.held[index] = None
                    phase.failed()
                    log.warn(
                        "response body over {cap} bytes: plugin {plugin} passes it unchanged",
                        cap=cap,
                        plugin=phase.plugin,
                        request_id=self.ctx.request_id,
                    )
                    data = b"".join(held) + data
                    continue
                held.append(data)
                self.held[index] = held
                self.sizes[index] = size
                if not last:
                    data = b""
                    continue
                data = b"".join(held)
            try:
                out = phase.call(data, last, self.pctx)
            except Exception:
                log.failure(
                    "plugin {plugin} failed in on_response_body",
                    plugin=phase.plugin,
                    request_id=self.ctx.request_id,
                )
                self.ctx.error = f"plugin {phase.plugin} failed in on_response_body"
                raise PluginFailed(phase.plugin) from None
            if not isinstance(out, bytes):
                self.ctx.error = f"plugin {phase.plugin} returned no bytes from on_response_body"
                phase.failed()
                raise PluginFailed(phase.plugin)
            data = out
        return data
