"""Shared fixtures: things started by a test are stopped after it, in reverse order."""

from __future__ import annotations

from typing import Any, AsyncIterator

import pytest_twisted
from twisted.internet import defer


class Closer:
    """Collects started gateways/upstreams; the fixture stops them all after the test."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    def add(self, item: Any) -> Any:
        self.items.append(item)
        return item

    async def close(self) -> None:
        for item in reversed(self.items):
            stop = getattr(item, "stopService", None) or item.stop
            await defer.maybeDeferred(stop)


@pytest_twisted.async_yield_fixture
async def closer() -> AsyncIterator[Closer]:
    c = Closer()
    yield c
    await c.close()
