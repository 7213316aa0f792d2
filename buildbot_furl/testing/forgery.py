"""Forged attach attempts: FURLs with the master's TUBID and a wrong secret.

Used by tests and bench/attack to play someone who can reach the
master's port but holds no FURL.  The attempts can come from another
loopback address (``127.0.0.2``...), so that a master's per-address limits
can be told apart from its real workers on ``127.0.0.1``.
"""

from __future__ import annotations

import dataclasses
import secrets
from typing import Any

from foolscap.api import Tub
from foolscap.ipb import IConnectionHintHandler
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from zope.interface import implementer

from buildbot_furl.furl import Furl, new_swissnum
from buildbot_furl.tubs import make_tub


@implementer(IConnectionHintHandler)
class _FromAddress:
    """Dial ``tcp:HOST:PORT`` hints from a chosen local address."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.dialed = 0  # connections opened

    def hint_to_endpoint(self, hint: str, reactor_: Any, update_status: Any) -> tuple[Any, str]:
        _, host, port = hint.split(":")
        self.dialed += 1
        return TCP4ClientEndpoint(reactor_, host, int(port), timeout=10,
                                  bindAddress=(self.source, 0)), host

    def describe(self) -> str:
        return f"tcp from {self.source}"


@dataclasses.dataclass
class ForgeryResult:
    attempts: int = 0
    accepted: int = 0  # forged FURLs that got a reference: must stay 0
    refused: int = 0  # the master said it does not know the name
    failed: int = 0  # the connection was closed, reset or refused before an answer
    connections: int = 0  # connections the forger had to open


def forging_tub(source: str = "127.0.0.2") -> tuple[Tub, _FromAddress]:
    tub = make_tub(None, keepalive=0, disconnect_timeout=0)
    handler = _FromAddress(source)
    tub.removeAllConnectionHintHandlers()
    tub.addConnectionHintHandler("tcp", handler)
    return tub, handler


async def forge(tubid: str, host: str, port: int, attempts: int, source: str = "127.0.0.2",
                concurrency: int = 4) -> ForgeryResult:
    """``attempts`` lookups of random secrets at the master, ``concurrency``
    at a time, from ``source``; how they ended."""
    tub, handler = forging_tub(source)
    tub.startService()
    result = ForgeryResult()
    sem = defer.DeferredSemaphore(concurrency)

    async def one() -> None:
        furl = str(Furl(tubid, (f"tcp:{host}:{port}",), new_swissnum()))
        result.attempts += 1
        try:
            d = tub.getReference(furl)
            d.addTimeout(15, reactor)
            await d
        except Exception as e:  # noqa: BLE001 - every way of being turned away counts
            if "KeyError" in repr(e):  # the master said: no such name
                result.refused += 1
            else:  # the connection was closed or refused first
                result.failed += 1
        else:
            result.accepted += 1

    try:
        await defer.DeferredList([sem.run(lambda: defer.Deferred.fromCoroutine(one()))
                                  for _ in range(attempts)], consumeErrors=True)
    finally:
        result.connections = handler.dialed
        await tub.stopService()
    return result


def random_name() -> str:
    return secrets.token_hex(16)
