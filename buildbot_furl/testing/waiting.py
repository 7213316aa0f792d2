"""Waiting on the reactor, for in-process tests that run a real reactor
(pytest-twisted): a Deferred that fires later, and a poll until a condition
holds.  The blocking poll, for harness threads and scripts, is
:func:`buildbot_furl.testing.procs.wait_for`."""

from __future__ import annotations

import time
from collections.abc import Callable

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime


def _reactor() -> IReactorTime:
    from twisted.internet import reactor  # the running one, not at import time

    return reactor  # type: ignore[return-value]


def sleep(seconds: float, clock: IReactorTime | None = None) -> defer.Deferred[None]:
    """A Deferred that fires (with None) ``seconds`` from now on ``clock``
    (the reactor unless given)."""
    d: defer.Deferred[None] = defer.Deferred()
    (clock or _reactor()).callLater(seconds, d.callback, None)
    return d


async def wait_for(pred: Callable[[], bool], timeout: float, interval: float = 0.1,
                   clock: IReactorTime | None = None) -> bool:
    """Poll ``pred`` every ``interval`` s, without blocking the reactor, until
    it holds (True) or ``timeout`` s of wall-clock time pass (its last value)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        await sleep(interval, clock)
    return pred()
