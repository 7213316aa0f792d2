"""The benchmark's clock and its time limits."""

from __future__ import annotations

import time
from typing import Any

from twisted.internet import defer, reactor, task

#: the longest any one command or transfer may take
OP_TIMEOUT = 180.0


def now() -> float:
    return time.perf_counter()


async def within(d: defer.Deferred[Any], seconds: float, what: str) -> Any:
    """``await d``, or RuntimeError after ``seconds``."""
    try:
        return await d.addTimeout(seconds, reactor)
    except defer.TimeoutError:
        raise RuntimeError(f"timed out after {seconds:.0f} s: {what}") from None


async def pause(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)
