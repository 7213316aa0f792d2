"""The worker's update batching and the broker's hang-up, on a task.Clock.

Updates added within one turn of the reactor leave as one batch when the
turn ends (a ``callLater(0)`` on the sender's clock), unless they fill a
batch first; a connection that keeps asking for unknown names is hung up
on the Tub's clock.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task

from buildbot_furl.protocol import encode
from buildbot_furl.protocol.messages import decode_updates
from buildbot_furl.worker.streams import BATCH_BYTES, UpdateSender


class Status:
    """The master's command-status object: records the batches it is sent."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, list[dict[str, Any]]]] = []

    def callRemote(self, method: str, seq: int, payload: bytes) -> defer.Deferred[bytes]:  # noqa: N802
        assert method == "update"
        self.batches.append((seq, decode_updates(payload)))
        return defer.succeed(encode(["ok", seq]))


def _sender() -> tuple[UpdateSender, Status, task.Clock]:
    status, clock = Status(), task.Clock()
    return UpdateSender(status, lambda: None, lambda: None, clock), status, clock


def test_updates_of_one_turn_leave_in_one_batch_when_the_turn_ends() -> None:
    sender, status, clock = _sender()
    sender.add([["stdout", "a\n"]])
    sender.add([["stdout", "b\n"], ["stderr", "c\n"]])
    assert status.batches == []  # nothing yet: the turn is not over
    clock.advance(0)
    assert status.batches == [(1, [{"stdout": "a\n"}, {"stdout": "b\n"}, {"stderr": "c\n"}])]
    assert sender.acked == 1 and sender.unacked_bytes == 0
    clock.advance(0)
    assert len(status.batches) == 1  # one flush per turn, not one per add


def test_a_full_batch_leaves_at_once_and_the_rest_at_the_end_of_the_turn() -> None:
    sender, status, clock = _sender()
    line = "x" * 1000 + "\n"
    n = BATCH_BYTES // len(line) + 10
    sender.add([["stdout", line]] * n)
    assert len(status.batches) == 1  # the first full batch, without the clock
    clock.advance(0)
    assert len(status.batches) == 2
    sent = [u["stdout"] for _, batch in status.batches for u in batch]
    assert sent == [line] * n  # every line, in order, once
    assert [seq for seq, _ in status.batches] == [1, 2]


def test_a_connection_that_keeps_guessing_is_hung_up_on_the_tubs_clock(monkeypatch: Any) -> None:
    import foolscap.broker

    from buildbot_furl.tubs import REFUSALS_PER_CONNECTION, TubHooks, _PeerAwareBroker

    clock = task.Clock()

    class Transport:
        lost = aborted = False

        def loseConnection(self) -> None:  # noqa: N802
            self.lost = True

        def abortConnection(self) -> None:  # noqa: N802
            self.aborted = True

    class Tub:
        hooks = TubHooks(on_refused_name=lambda *a: True, clock=clock)

    broker = _PeerAwareBroker.__new__(_PeerAwareBroker)
    broker.tub, broker.transport = Tub(), Transport()
    broker._gate_key, broker.remote_tubref = None, None

    def unknown(self: Any, name: Any) -> Any:  # foolscap's lookup of a name it does not serve
        raise KeyError(name)

    monkeypatch.setattr(foolscap.broker.Broker, "remote_getReferenceByName", unknown)
    for _ in range(REFUSALS_PER_CONNECTION):
        try:
            broker.remote_getReferenceByName(b"guess")
        except KeyError:
            pass
    assert not broker.transport.lost  # the last answer goes out first
    clock.advance(0.1)
    assert broker.transport.lost and not broker.transport.aborted
    clock.advance(10)
    assert broker.transport.aborted  # it never read the answer: cut
