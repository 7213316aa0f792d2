"""In-process stand-ins for a peer, for tests that run no process."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from buildbot_furl.protocol import encode


class FakeBot:
    """A worker's RemoteReference as the master holds it: ``lose()`` drops
    the connection (its disconnect watchers are told), every call answers
    ``ok`` with ``answer``."""

    def __init__(self, answer: Any = "pong", peer: tuple[str, int] = ("127.0.0.1", 4242)) -> None:
        self.disconnect: list[Any] = []
        self.answer = answer
        self.peer = peer
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def notifyOnDisconnect(self, cb: Any, *args: Any) -> object:  # noqa: N802 - foolscap's
        self.disconnect.append((cb, args))
        return cb

    def lose(self) -> None:
        """The connection drops: tell whoever asked to know."""
        for cb, args in list(self.disconnect):
            cb(*args)

    def getPeer(self) -> Any:  # noqa: N802 - foolscap's
        host, port = self.peer

        class Peer:
            pass

        p = Peer()
        p.host, p.port = host, port  # type: ignore[attr-defined]
        return p

    def callRemote(self, method: str, *args: Any, **kwargs: Any) -> defer.Deferred[bytes]:  # noqa: N802
        self.calls.append((method, args))
        return defer.succeed(encode(["ok", self.answer]))

    @property
    def started(self) -> list[tuple[Any, ...]]:
        """The arguments of every ``startCommand`` call (what the master
        handed over: its status, writer and reader references among them)."""
        return [args for method, args in self.calls if method == "startCommand"]


def run_at_once(coro: Any) -> Any:
    """Run a coroutine that never really waits (its fakes answer at once) to
    its end, and answer its result; AssertionError if it does wait."""
    try:
        coro.send(None)
    except StopIteration as e:
        return e.value
    raise AssertionError("the coroutine waited")
