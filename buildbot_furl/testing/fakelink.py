"""A master the worker's link can be driven against, by hand, on a clock:
a dialer whose dials the test answers, and login objects whose calls
(attach, drain, leave) it answers, and whose link it cuts."""

from __future__ import annotations

import secrets
from types import SimpleNamespace
from typing import Any

from twisted.internet import defer
from twisted.internet import error as terror

from buildbot_furl.errors import WireError
from buildbot_furl.protocol.envelope import encode
from buildbot_furl.protocol.messages import SessionProof


def attach_answer(resumed: bool = False, grace: float = 60.0, commands: tuple[str, ...] = (),
                  name: str = "w1", session: SessionProof | None = None) -> dict[str, Any]:
    """An attach answer, as the master's wire carries it."""
    proof = session or SessionProof(secrets.token_hex(16), secrets.token_hex(32))
    return {"protocol": 1, "session": proof.session, "secret": proof.secret, "grace": grace,
            "master_version": "test", "resumed": resumed, "commands": list(commands),
            "name": name}


class FakeLogin:
    """The master's login object: each call waits for the test's answer."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], defer.Deferred[bytes]]] = []
        self.watchers: list[Any] = []
        self.severed = False
        # what tubs.sever reaches for: shutting the broker down cuts the link
        self.tracker = SimpleNamespace(broker=SimpleNamespace(shutdown=self._shutdown,
                                                              transport=None))

    def callRemote(self, method: str, *args: Any) -> defer.Deferred[bytes]:  # noqa: N802
        d: defer.Deferred[bytes] = defer.Deferred()
        self.calls.append((method, args, d))
        return d

    def notifyOnDisconnect(self, cb: Any, *args: Any) -> None:  # noqa: N802
        self.watchers.append((cb, args))

    def methods(self) -> list[str]:
        return [m for m, _, _ in self.calls]

    def _take(self, method: str) -> defer.Deferred[bytes]:
        for i, (m, _, d) in enumerate(self.calls):
            if m == method and not d.called:
                return self.calls[i][2]
        raise AssertionError(f"no {method} call is waiting (calls: {self.methods()})")

    def answer(self, method: str, value: Any) -> None:
        self._take(method).callback(encode(["ok", value]))

    def refuse(self, method: str, error: WireError) -> None:
        self._take(method).callback(encode(error.to_wire()))

    def fail(self, method: str, error: Exception) -> None:
        self._take(method).errback(error)

    def cut(self) -> None:
        """The link goes: pending calls fail, the watchers hear of it."""
        for _, _, d in self.calls:
            if not d.called:
                d.errback(terror.ConnectionLost())
        watchers, self.watchers = self.watchers, []
        for cb, args in watchers:
            cb(*args)

    def _shutdown(self, why: Any) -> None:
        self.severed = True
        self.cut()


class FakeDialer:
    """``tub.getReference``: each dial waits for the test to connect or refuse it."""

    def __init__(self) -> None:
        self.dials: list[tuple[str, defer.Deferred[Any]]] = []

    def __call__(self, furl: str) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.dials.append((furl, d))
        return d

    @property
    def waiting(self) -> bool:
        return bool(self.dials) and not self.dials[-1][1].called

    def connect(self) -> FakeLogin:
        login = FakeLogin()
        self.dials[-1][1].callback(login)
        return login

    def refuse(self, error: Exception | None = None) -> None:
        self.dials[-1][1].errback(error or terror.ConnectionRefusedError())
