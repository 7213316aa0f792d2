"""One piece of asynchronous work, run under the reactor by a synchronous
command-line program (the CLI's calls to a master, a worker's claim of an
invite): its result is returned, its error raised, Ctrl-C is Interrupted."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from twisted.internet import defer
from twisted.internet.task import react

from buildbot_furl.errors import Interrupted

T = TypeVar("T")


class _Once(Generic[T]):
    def __init__(self, fn: Callable[[Any], Awaitable[T]]) -> None:
        self.fn = fn
        self.result: T | None = None
        self.error: BaseException | None = None
        self.done = False

    async def _main(self, reactor: Any) -> None:
        try:
            self.result = await self.fn(reactor)
        except BaseException as e:  # handed back to the synchronous caller
            self.error = e
        finally:
            self.done = True

    def _entry(self, reactor: Any) -> defer.Deferred[None]:
        d = defer.Deferred.fromCoroutine(self._main(reactor))
        d.addErrback(lambda f: setattr(self, "error", self.error or f.value))
        return d

    def run(self) -> T:
        try:
            react(self._entry)
        except SystemExit as e:
            if e.code not in (0, None) and self.error is None:
                raise
        if self.error is not None:
            raise self.error
        if not self.done:  # the reactor stopped first: Ctrl-C (or SIGTERM)
            raise Interrupted("interrupted")
        return self.result  # type: ignore[return-value]


def run_once(fn: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``fn(reactor)`` under the reactor (once per process: a reactor
    cannot be restarted); return its result or raise its error."""
    return _Once(fn).run()
