"""RouteCache's collapsing and lookups on task.Clock with the memory store: no sockets, the
forwarder replaced by a recorder."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from avx_twisted.cache import Policy
from avx_twisted.cache_store import MemoryStore
from avx_twisted.h1 import Fields, ResponseState
from avx_twisted.response_cache import RouteCache


class Request:
    """What RouteCache reads of a request, and the answer it writes."""

    def __init__(self, target: bytes = b"/a", **fields: bytes) -> None:
        self.method = b"GET"
        self.target = target
        self.path = target.partition(b"?")[0]
        self.authority = b"api.test"
        self.secure = False
        self.fields = Fields([(k.replace("_", "-").encode(), v) for k, v in fields.items()])
        self.state = ResponseState.PENDING
        self.answer: list[Any] = []

    @property
    def started(self) -> bool:
        return self.state is not ResponseState.PENDING

    @property
    def finished(self) -> bool:
        return self.state is ResponseState.DONE

    def start(self, status: int, fields: Any, length: Any) -> None:
        self.state = ResponseState.STREAMING
        self.answer = [status, dict(fields), b""]

    def write(self, data: bytes) -> None:
        self.answer[2] += data

    def finish(self) -> None:
        self.state = ResponseState.DONE


class Response:
    def __init__(self, status: int, fields: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        self.fields = Fields(fields)
        self.length = None


FRESH = [(b"Cache-Control", b"max-age=60")]


class CollapsingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.cache = RouteCache("r", Policy(), MemoryStore(self.clock, 1 << 20), self.clock, 5.0)
        self.forwarded: list[tuple[Request, Any]] = []

    def handle(self, request: Request) -> None:
        self.cache.handle(request, None, lambda hooks: self.forwarded.append((request, hooks)))

    def answer(self, index: int, status: int = 200, fields=FRESH, body: bytes = b"body") -> None:
        """The upstream answers the ``index``-th forwarded request (as the Exchange would)."""
        request, hooks = self.forwarded[index]
        out = hooks.started(status, list(fields), len(body))
        request.start(status, out, len(body))
        hooks.data(body)
        request.write(body)
        hooks.done()
        request.finish()

    def test_concurrent_misses_wait_for_the_first_and_are_answered_from_the_cache(self) -> None:
        first, second, third = Request(), Request(), Request()
        for request in (first, second, third):
            self.handle(request)
        self.assertEqual([r for r, _ in self.forwarded], [first])
        self.answer(0)
        self.assertEqual(second.answer[:1] + third.answer[2:], [200, b"body"])
        self.assertTrue(second.answer[1][b"Cache-Status"].startswith(b"avx; hit"))
        self.assertEqual(len(self.forwarded), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_waiter_goes_upstream_itself_after_the_lock_timeout(self) -> None:
        first, second = Request(), Request()
        self.handle(first)
        self.handle(second)
        self.clock.advance(4.9)
        self.assertEqual(len(self.forwarded), 1)
        self.clock.advance(0.1)
        self.assertEqual([r for r, _ in self.forwarded], [first, second])
        # The first's answer, arriving late, releases nobody twice.
        self.answer(0)
        self.answer(1)
        self.assertEqual(second.answer[0], 200)

    def test_an_uncacheable_answer_releases_the_waiters_at_once(self) -> None:
        first, second = Request(), Request()
        self.handle(first)
        self.handle(second)
        request, hooks = self.forwarded[0]
        hooks.started(200, [(b"Cache-Control", b"no-store")], 4)  # head: not storable
        self.assertEqual([r for r, _ in self.forwarded], [first, second])

    def test_different_keys_do_not_wait_for_each_other(self) -> None:
        self.handle(Request(b"/a"))
        self.handle(Request(b"/b"))
        self.assertEqual(len(self.forwarded), 2)

    def test_a_broken_body_stores_nothing_and_releases(self) -> None:
        first, second = Request(), Request()
        self.handle(first)
        self.handle(second)
        request, hooks = self.forwarded[0]
        hooks.started(200, list(FRESH), 100)
        hooks.data(b"part")
        hooks.broken()
        self.assertEqual(len(self.forwarded), 2)  # the waiter went upstream
        self.assertEqual(self.successResultOf(self.cache.store.get(self.cache.key(first))), [])

    def test_key_headers_make_separate_entries(self) -> None:
        cache = RouteCache(
            "r", Policy(key_headers=(b"x-tenant",)), MemoryStore(self.clock, 1 << 20), self.clock
        )
        one, two = Request(x_tenant=b"1"), Request(x_tenant=b"2")
        self.assertNotEqual(cache.key(one), cache.key(two))
