# -*- test-case-name: tests.unit.test_response_cache -*-
"""The shared response cache of a route (``[routes.cache]``): lookup before forwarding, store
while the answer streams to the first client, and the rest of RFC 9111 around them.

Per request on a cached route, :class:`RouteCache.handle` runs where the forwarder would:

- a stored variant that may answer (fresh, or stale as allowed) answers at once — a client's
  conditional GET gets 304, HEAD the head, one byte range 206;
- stale within ``stale-while-revalidate``: answers stale and refreshes in the background (one
  refresh per key at a time);
- otherwise the request is forwarded with :class:`CacheHooks`: revalidation with the stored
  validators (a 304 refreshes the entry and the client gets it), ``stale-if-error`` when the
  upstream fails, and the answer stored while it streams (up to ``max_object_bytes``; a body
  that breaks off is never stored);
- concurrent misses of one key wait (up to ``lock_timeout_ms``) for the first one's answer,
  then look again; an answer that cannot be stored releases them at once;
- a successful unsafe request invalidates its target and same-host ``Location`` /
  ``Content-Location``.

The rules are :mod:`avx_twisted.cache`'s; the entries live in an
:class:`~avx_twisted.cache_store.ICacheStore`.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.logger import Logger
from twisted.python.failure import Failure

from . import cache
from .cache import FRESH, STALE_OK, Policy
from .cache_store import CacheEntry
from .errors import error_answer
from .filters import send_answer
from .h1 import Fields, RequestBody, ResponseState

log = Logger()
Pair = Tuple[bytes, bytes]

_GET = b"GET"
_HEAD = b"HEAD"
_CONDITIONALS = frozenset([b"if-none-match", b"if-modified-since"])
_RANGE = re.compile(rb"^bytes=(\d*)-(\d*)$")
_CACHE_STATUS = b"Cache-Status"
#: Stored fields an answer from the cache sets itself (its Age, its framing).
_NOT_SERVED = (b"age", b"content-length", b"transfer-encoding")


class RouteCache:
    """The cache of one route: its policy, the shared store, and the keys in flight."""

    def __init__(
        self,
        route: str,
        policy: Policy,
        store: Any,
        clock: Any,
        lock_timeout_s: float = 5.0,
        status_header: bool = True,
        metrics: Any = None,
    ) -> None:
        self.route = route
        self.policy = policy
        self.store = store
        self.clock = clock
        self.lock_timeout_s = lock_timeout_s
        self.status_header = status_header
        self.metrics = metrics
        #: Keys being fetched, and the lookups waiting for them (collapsing).
        self._inflight: Dict[bytes, List[Callable[[], None]]] = {}
        self._refreshing: set = set()
        #: Forwards a request without a client (background refreshes): called with the
        #: request, its upstream target and its hooks; set by the runtime.
        self.refresh_forward: Optional[Callable[[Any, bytes, Any], None]] = None

    # -- the request side -------------------------------------------------------------------

    def handle(
        self, request: Any, ctx: Any, forward: Callable[[Optional[CacheHooks]], None]
    ) -> None:
        """Answer ``request`` from the cache, or ``forward(hooks)`` it upstream."""
        method = request.method
        if method not in cache.SAFE_METHODS:
            forward(_Invalidation(self, request))
            return
        if method != _GET and method != _HEAD:
            self._count(ctx, "bypass")
            forward(None)
            return
        request_cc = cache.parse_cache_control(request.fields.get_all(b"cache-control"))
        if b"no-store" in request_cc:
            self._count(ctx, "bypass")
            forward(CacheHooks(self, request, ctx, self.key(request), None, store=False))
            return
        self._lookup(request, ctx, forward, self.key(request), request_cc, collapse=True)

    def key(self, request: Any) -> bytes:
        scheme = b"https" if request.secure else b"http"
        host = request.authority or b""
        return cache.primary_key(
            scheme, host, request.target, self.policy.key_headers, request.fields.pairs
        )

    def _lookup(
        self,
        request: Any,
        ctx: Any,
        forward: Callable[[Optional[CacheHooks]], None],
        key: bytes,
        request_cc: cache.Directives,
        collapse: bool,
    ) -> None:
        d = self.store.get(key)
        d.addCallback(self._found, request, ctx, forward, key, request_cc, collapse)
        d.addErrback(self._store_failed, request, ctx, forward, key)

    def _store_failed(
        self, failure: Failure, request: Any, ctx: Any, forward: Any, key: bytes
    ) -> None:
        log.failure("cache lookup failed for route {route}", failure, route=self.route)
        if not request.finished:
            forward(CacheHooks(self, request, ctx, key, None, store=False))

    def _found(
        self,
        entries: List[CacheEntry],
        request: Any,
        ctx: Any,
        forward: Callable[[Optional[CacheHooks]], None],
        key: bytes,
        request_cc: cache.Directives,
        collapse: bool,
    ) -> None:
        if request.finished:
            return
        entry = self.variant(entries, request)
        now = self.clock.seconds()
        if entry is not None:
            verdict = cache.evaluate(
                entry.fields,
                entry.request_time,
                entry.response_time,
                request.fields.pairs,
                self.policy,
                now,
                request_cc,
            )
            if verdict.use == FRESH:
                self._count(ctx, "hit")
                self.serve(
                    request, ctx, entry, verdict.age, cache.cache_status(True, ttl=verdict.ttl)
                )
                return
            if verdict.use == STALE_OK:
                self._count(ctx, "stale")
                status = cache.cache_status(True, ttl=verdict.ttl, detail="stale")
                self.serve(request, ctx, entry, verdict.age, status)
                if verdict.refresh:
                    self._refresh(request, ctx, key, entry)
                return
        if b"only-if-cached" in request_cc:
            self._count(ctx, "miss")
            answer = error_answer(
                504, "not in cache (only-if-cached)", (), ctx.request_id if ctx else b""
            )
            send_answer(answer, request, ctx)
            return
        if entry is None and collapse:
            waiting = self._inflight.get(key)
            if waiting is not None:
                self._wait(waiting, request, ctx, forward, key, request_cc)
                return
            self._inflight[key] = []
        self._count(ctx, "miss" if entry is None else "revalidated")
        hooks = CacheHooks(self, request, ctx, key, entry, owns_lock=entry is None and collapse)
        if entry is None and entries:
            hooks.fwd = "vary-miss"  # the URI is stored, not this variant (RFC 9211 2.2)
        forward(hooks)

    def _wait(
        self,
        waiting: List[Callable[[], None]],
        request: Any,
        ctx: Any,
        forward: Any,
        key: bytes,
        request_cc: cache.Directives,
    ) -> None:
        """Another request is fetching ``key``: look again when it is done, or go upstream
        after ``lock_timeout_s``."""
        state = {"done": False}

        def again() -> None:
            if state["done"]:
                return
            state["done"] = True
            if timer.active():
                timer.cancel()
            if not request.finished:
                self._lookup(request, ctx, forward, key, request_cc, collapse=False)

        timer = self.clock.callLater(self.lock_timeout_s, again)
        waiting.append(again)
        if self.metrics is not None:
            self.metrics.cache_collapsed().inc()

    def release(self, key: bytes) -> None:
        """The fetch of ``key`` is over (stored or not): the waiters look again."""
        waiting = self._inflight.pop(key, None)
        for again in waiting or ():
            again()

    @staticmethod
    def variant(entries: List[CacheEntry], request: Any) -> Optional[CacheEntry]:
        """The stored variant for this request's Vary'd fields (newest first), if any."""
        for entry in entries:
            names = cache.vary_names(entry.fields)
            if names is None:
                continue
            if cache.variant_key(names, request.fields.pairs) == entry.variant:
                return entry
        return None

    # -- answering from an entry --------------------------------------------------------------

    def serve(
        self, request: Any, ctx: Any, entry: CacheEntry, age: float, status_value: bytes
    ) -> None:
        """Answer from ``entry``: 304 to a matching conditional GET, the head to HEAD, one
        range as 206, else the whole stored response (its Date kept, Age set)."""
        if ctx is not None:
            ctx.upstream_status = None
        fields = [(n, v) for n, v in entry.fields if n.lower() not in _NOT_SERVED]
        fields.append((b"Age", b"%d" % int(age)))
        if self.status_header:
            fields.append((_CACHE_STATUS, status_value))
        body = entry.body
        status = entry.status
        conditional = (
            request.fields.get(b"if-none-match") is not None
            or request.fields.get(b"if-modified-since") is not None
        )
        if status == 200 and conditional:
            if cache.not_modified(request.fields.pairs, entry.fields):
                out = cache.not_modified_fields(entry.fields) + [(b"Age", b"%d" % int(age))]
                if self.status_header:
                    out.append((_CACHE_STATUS, status_value))
                request.start(304, out, None)
                request.finish()
                return
        wanted = request.fields.get(b"range")
        if wanted is not None and status == 200 and request.method == _GET:
            chosen = _one_range(wanted, len(body))
            if chosen is None:
                fields.append((b"Content-Range", b"bytes */%d" % len(body)))
                request.start(416, fields, 0)
                request.finish()
                return
            if chosen != (0, len(body) - 1):
                first, last = chosen
                fields.append((b"Content-Range", b"bytes %d-%d/%d" % (first, last, len(body))))
                body = body[first : last + 1]
                status = 206
        length = len(body)
        request.start(status, fields, length)
        if body and request.method != _HEAD:
            request.write(body)
        request.finish()

    def _refresh(self, request: Any, ctx: Any, key: bytes, entry: CacheEntry) -> None:
        """stale-while-revalidate: fetch ``key`` again in the background, once at a time."""
        if key in self._refreshing or self.refresh_forward is None:
            return
        self._refreshing.add(key)
        background = BackgroundRequest(request, self._refreshed, key)
        target = ctx.upstream_target if ctx is not None else request.target
        hooks = CacheHooks(self, background, None, key, entry)
        self.refresh_forward(background, target, hooks)

    def _refreshed(self, key: bytes) -> None:
        self._refreshing.discard(key)

    # -- storing ------------------------------------------------------------------------------

    def keep(
        self, hooks: CacheHooks, status: int, fields: List[Pair], body: bytes, request_time: float
    ) -> None:
        now = self.clock.seconds()
        request = hooks.request
        names = cache.vary_names(fields) or ()
        entry = CacheEntry(
            key=hooks.key,
            variant=cache.variant_key(names, request.fields.pairs),
            route=self.route,
            path=request.path,
            status=status,
            fields=fields,
            body=body,
            request_time=request_time,
            response_time=now,
            expires_at=now + cache.store_for(fields, self.policy),
        )
        d = self.store.put(entry, self.policy.max_variants)
        d.addErrback(
            lambda f: log.failure("cache store failed for route {route}", f, route=self.route)
        )
        d.addBoth(lambda _: self.release(hooks.key))

    def _count(self, ctx: Any, result: str) -> None:
        if ctx is not None:
            ctx.cache = result
        if self.metrics is not None:
            self.metrics.cache_request(result).inc()


class CacheHooks:
    """What the forwarder asks the cache about one forwarded request (see
    :class:`~avx_twisted.proxy.Exchange`): the upstream fields, what to do with the answer, and
    the body to keep."""

    def __init__(
        self,
        cache_: RouteCache,
        request: Any,
        ctx: Any,
        key: bytes,
        stored: Optional[CacheEntry],
        owns_lock: bool = False,
        store: bool = True,
    ) -> None:
        self.cache = cache_
        self.request = request
        self.ctx = ctx
        self.key = key
        #: The stored entry being revalidated (or kept for stale-if-error).
        self.stored = stored
        self.owns_lock = owns_lock
        self.may_store = store
        self.request_time = cache_.clock.seconds()
        #: Why it went upstream, for Cache-Status (RFC 9211 2.2).
        self.fwd = "uri-miss"
        self._chunks: Optional[List[bytes]] = None
        self._size = 0
        self._status = 0
        self._fields: List[Pair] = []
        self._released = False

    def upstream_fields(self, fields: List[Pair]) -> List[Pair]:
        """The fields sent upstream: with our validators when revalidating a stored entry
        (the client's own conditionals are answered from the result)."""
        stored = self.stored
        if stored is None or not cache.has_validator(stored.fields):
            return fields
        out = [f for f in fields if f[0].lower() not in _CONDITIONALS]
        out.extend(cache.revalidation_fields(stored.fields))
        return out

    def response(self, exchange: Any, response: Any) -> bool:
        """The upstream's response head: True when the cache answered instead (a 304 to our
        revalidation, or a stale entry for a 5xx); else the body is kept while it streams."""
        status = response.status
        stored = self.stored
        if stored is not None and status == 304 and cache.has_validator(stored.fields):
            # The 304 answers the validators of this entry (we asked about no other).
            exchange.drop_response(response)
            fields = cache.updated_fields(stored.fields, response.fields.pairs)
            self.cache.keep(self, stored.status, fields, stored.body, self.request_time)
            self._released = True
            entry = _with(stored, fields, self.request_time, self.cache.clock.seconds())
            age = cache.current_age(
                fields, entry.request_time, entry.response_time, entry.response_time
            )
            status_value = cache.cache_status(False, "stale", detail="revalidated")
            self.cache.serve(self.request, self.ctx, entry, age, status_value)
            return True
        if status >= 500 and self.serve_stale_on_error():
            exchange.drop_response(response)
            return True
        return False

    def started(self, status: int, fields: List[Pair], length: Optional[int]) -> List[Pair]:
        """The client's response head is about to go: decide whether to keep the body, and
        add Cache-Status."""
        request = self.request
        if not self.may_store:
            why = "request-no-store"
        else:
            why = cache.storable(
                request.method, status, request.fields.pairs, fields, self.cache.policy
            )
            if why is None and length is not None and length > self.cache.policy.max_object_bytes:
                why = "too-large"
        if why is None and request.method == _GET:
            self._chunks = []
            self._status = status
            self._fields = cache.stored_fields(fields)
        else:
            if self.ctx is not None and self.ctx.cache == "miss":
                self.ctx.cache = "uncacheable"
                if self.cache.metrics is not None:
                    self.cache.metrics.cache_request("uncacheable").inc()
            self.release()
        if self.cache.status_header and not isinstance(request, BackgroundRequest):
            fwd = self.fwd if self.stored is None else "stale"
            if self.ctx is not None and self.ctx.cache == "bypass":
                fwd = "request"
            fields = fields + [(_CACHE_STATUS, cache.cache_status(False, fwd, stored=why is None))]
        return fields

    def data(self, data: bytes) -> None:
        chunks = self._chunks
        if chunks is None:
            return
        self._size += len(data)
        if self._size > self.cache.policy.max_object_bytes:
            self._chunks = None  # too large after all: the client still gets all of it
            self.release()
            return
        chunks.append(data)

    def done(self) -> None:
        chunks, self._chunks = self._chunks, None
        if chunks is not None:
            self._released = True
            self.cache.keep(self, self._status, self._fields, b"".join(chunks), self.request_time)
        else:
            self.release()

    def broken(self) -> None:
        """The body broke off: nothing is stored."""
        self._chunks = None
        self.release()

    def failed(self, status: int) -> bool:
        """The gateway is about to answer ``status`` itself (the upstream failed): True when a
        stale entry answered instead (stale-if-error)."""
        self.release()
        return status >= 500 and self.serve_stale_on_error()

    def serve_stale_on_error(self) -> bool:
        stored = self.stored
        if stored is None or self.request.started:
            return False
        now = self.cache.clock.seconds()
        response_cc = cache.parse_cache_control(cache.get_all(stored.fields, b"cache-control"))
        if cache.never_stale(response_cc) or b"no-cache" in response_cc:
            return False
        window = cache.stale_if_error(response_cc, self.request.fields.pairs, self.cache.policy)
        age = cache.current_age(stored.fields, stored.request_time, stored.response_time, now)
        stale_for = age - cache.freshness_lifetime(stored.fields, self.cache.policy, response_cc)
        if window <= 0 or stale_for > window:
            return False
        self.release()
        self.cache._count(self.ctx, "stale")
        status_value = cache.cache_status(True, detail="stale-if-error")
        self.cache.serve(self.request, self.ctx, stored, age, status_value)
        return True

    def release(self) -> None:
        if not self._released:
            self._released = True
            if self.owns_lock:
                self.cache.release(self.key)
            if isinstance(self.request, BackgroundRequest):
                self.request.over()


class _Invalidation(CacheHooks):
    """An unsafe request: when it succeeds, its target and same-host Location /
    Content-Location URIs are no longer served from the cache (RFC 9111 4.4)."""

    def __init__(self, cache_: RouteCache, request: Any) -> None:
        super().__init__(cache_, request, request.context, b"", None, store=False)

    def upstream_fields(self, fields: List[Pair]) -> List[Pair]:
        return fields

    def response(self, exchange: Any, response: Any) -> bool:
        if response.status < 400:
            request = self.request
            host = request.authority or b""
            scheme = b"https" if request.secure else b"http"
            store = self.cache.store
            for target in cache.invalidated_targets(host, request.target, response.fields.pairs):
                uri = cache.primary_key(scheme, host, target, (), [])
                if self.cache.policy.key_headers:
                    # Keys carry header values no one can list: every key of the URI goes.
                    store.purge_uri(uri, target.partition(b"?")[0])
                else:
                    store.delete(uri)
            if self.cache.metrics is not None:
                self.cache.metrics.cache_request("invalidated").inc()
        return False

    def started(self, status: int, fields: List[Pair], length: Optional[int]) -> List[Pair]:
        return fields

    def failed(self, status: int) -> bool:
        return False


def _with(
    entry: CacheEntry, fields: List[Pair], request_time: float, response_time: float
) -> CacheEntry:
    return CacheEntry(
        key=entry.key,
        variant=entry.variant,
        route=entry.route,
        path=entry.path,
        status=entry.status,
        fields=fields,
        body=entry.body,
        request_time=request_time,
        response_time=response_time,
        expires_at=entry.expires_at,
    )


def _one_range(value: bytes, size: int) -> Optional[Tuple[int, int]]:
    """The one byte range of a ``Range`` field within ``size`` bytes; the whole body for a
    form we do not serve (several ranges), None when unsatisfiable (416)."""
    match = _RANGE.match(value.strip())
    if match is None:
        return (0, size - 1) if size else (0, -1)
    first, last = match.group(1), match.group(2)
    if not first and not last:
        return (0, size - 1)
    if not first:
        suffix = int(last)
        if suffix == 0:
            return None
        return (max(0, size - suffix), size - 1)
    start = int(first)
    if start >= size:
        return None
    end = min(int(last), size - 1) if last else size - 1
    if end < start:
        return (0, size - 1)
    return (start, end)


class BackgroundRequest:
    """A request with no client: the forwarder fetches a stale entry again through it
    (stale-while-revalidate), and what comes back goes only to the cache."""

    secure: bool
    version = b"1.1"

    def __init__(self, original: Any, over: Callable[[bytes], None], key: bytes) -> None:
        self.method = _GET
        self.target = original.target
        self.path = original.path
        self.query = original.query
        self.authority = original.authority
        self.secure = original.secure
        self.peer_host = original.peer_host
        self.fields = Fields(
            [(n, v) for n, v in original.fields.pairs if n.lower() not in _CONDITIONALS]
        )
        self.head = original.head
        self.body = RequestBody(None, False, 0, _nothing, _nothing, _nothing)
        self.response_fields = Fields()
        self.state = ResponseState.PENDING
        self.status = 0
        self.sent_bytes = 0
        self.context = None
        self.on_done: Any = None
        self.upgrade_rest = None
        self._over = over
        self._key = key

    @property
    def started(self) -> bool:
        return self.state is not ResponseState.PENDING

    @property
    def finished(self) -> bool:
        return self.state in (ResponseState.DONE, ResponseState.ABORTED)

    def start(
        self,
        status: int,
        fields: Any,
        length: Optional[int],
        reason: Any = None,
        add_date: bool = False,
    ) -> None:
        self.state = ResponseState.STREAMING
        self.status = status

    def respond(self, status: int, fields: Any = (), body: bytes = b"") -> None:
        self.state = ResponseState.DONE
        self.status = status
        self.over()

    def write(self, data: bytes) -> None:
        self.sent_bytes += len(data)

    def finish(self) -> None:
        self.state = ResponseState.DONE
        self.over()

    def abort(self) -> None:
        self.state = ResponseState.ABORTED
        self.over()

    def interim(self, status: int, fields: Any) -> None:
        pass

    def set_trailers(self, trailers: Any) -> None:
        pass

    def register_producer(self, producer: Any) -> None:
        pass

    def unregister_producer(self) -> None:
        pass

    def over(self) -> None:
        over, self._over = self._over, None
        if over is not None:
            over(self._key)


def _nothing() -> None:
    pass
