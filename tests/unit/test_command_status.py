"""CommandStatus, the master's side of a command: bounds on what a worker may
have it hold at once (a slow consumer must not turn into unbounded memory)."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet import defer

from buildbot_furl.master.commands import CommandStatus
from buildbot_furl.protocol import unwrap
from buildbot_furl.protocol.interfaces import UPDATE_WINDOW, UPDATES_IN_FLIGHT
from buildbot_furl.protocol.messages import encode_updates


class SlowConsumer:
    """A RemoteCommand whose consumer (a CLI reading slowly) holds each batch."""

    def __init__(self) -> None:
        self.waiting: list[defer.Deferred[None]] = []

    def remote_update(self, updates: list[Any]) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        self.waiting.append(d)
        return d

    def remote_complete(self, failure: Any) -> None:
        pass


def _batch(nbytes: int) -> bytes:
    return encode_updates([["stdout", "x" * nbytes]])


@pytest_twisted.ensureDeferred
async def test_update_batches_in_flight_are_bounded_before_decoding() -> None:
    violations: list[str] = []
    consumer = SlowConsumer()
    status = CommandStatus(consumer, on_violation=violations.append)
    size = 1024 * 1024
    # an honest worker: at most its window (and some overshoot) unacknowledged
    honest = [status.remote_update(seq, _batch(size))
              for seq in range(1, UPDATE_WINDOW // size + 3)]
    assert not violations
    # a hostile one ignores the window: past the bound, refused at once
    hostile = [status.remote_update(seq, _batch(size))
               for seq in range(len(honest) + 1, 101)]
    refused = [d for d in hostile if d.called]
    assert len(refused) >= 100 - UPDATES_IN_FLIGHT // size - 1
    assert violations and "waiting at once" in violations[0]
    held = status._in_flight
    assert held <= UPDATES_IN_FLIGHT
    # the consumer catches up: what was accepted is applied, in order
    while consumer.waiting:
        consumer.waiting.pop(0).callback(None)
    answers = [unwrap(await d) for d in honest]
    assert answers == list(range(1, len(honest) + 1))
    for d in hostile:
        d.addErrback(lambda f: None)
        await d
    assert status._in_flight == 0
