"""The refusal gate's admission of an over-limit address (issue 15 item 2):
in turn, never shut out; unknown names cut unanswered; timed with task.Clock."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from buildbot_furl.master.refusals import (
    CLOSE,
    GO,
    PENDING_PER_ADDRESS,
    SETTLE_TIMEOUT,
    WAIT,
    WAITING_PER_ADDRESS,
    Refusals,
)

HOST = "192.0.2.7"


class FakeConn:
    def __init__(self, log: list[str], name: str) -> None:
        self.log, self.name = log, name

    def pause(self) -> None:
        self.log.append(f"pause {self.name}")

    def resume(self) -> None:
        self.log.append(f"resume {self.name}")

    def abort(self) -> None:
        self.log.append(f"abort {self.name}")


def over_limit(clock: Clock, limit: int = 5) -> Refusals:
    r = Refusals(limit=limit, clock=clock)
    for _ in range(limit):
        assert r.refused(HOST, tubid="guesser") is True  # answered until the limit
    return r


def test_under_the_limit_every_connection_goes_on() -> None:
    r = Refusals(limit=5, clock=Clock())
    events: list[str] = []
    assert all(r.admit(HOST, (HOST, i), FakeConn(events, str(i))) == GO for i in range(100))
    assert events == []


def test_over_the_limit_connections_go_in_turn_and_are_never_all_shut_out() -> None:
    clock = Clock()
    r = over_limit(clock)
    events: list[str] = []
    verdicts = [r.admit(HOST, (HOST, i), FakeConn(events, str(i)))
                for i in range(PENDING_PER_ADDRESS + WAITING_PER_ADDRESS + 3)]
    assert verdicts[:PENDING_PER_ADDRESS] == [GO] * PENDING_PER_ADDRESS
    assert verdicts[PENDING_PER_ADDRESS:-3] == [WAIT] * WAITING_PER_ADDRESS
    assert verdicts[-3:] == [CLOSE] * 3
    assert r.describe()["closed_before_tls"] == 3
    # a guesser's connection asks an unknown name: cut unanswered, and the
    # first held connection goes on (in order)
    assert r.refused(HOST, tubid="guesser", key=(HOST, 0)) is False
    assert events == [f"resume {PENDING_PER_ADDRESS}"]
    # a worker's connection names a valid FURL: the next goes on
    r.resolved(HOST, (HOST, 1), "worker")
    assert events[-1] == f"resume {PENDING_PER_ADDRESS + 1}"
    # one that never asks anything is aborted after SETTLE_TIMEOUT
    clock.advance(SETTLE_TIMEOUT)
    assert "abort 2" in events
    # a new interval: nothing is held any more
    r.summarize()
    assert r.admit(HOST, (HOST, 999), FakeConn(events, "late")) == GO
    assert r.describe()["waiting"] == 0


def test_over_the_limit_unknown_names_are_cut_and_not_logged_but_known_workers_are_answered(
        ) -> None:
    lines: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(lines.append)
    try:
        r = over_limit(Clock())
        r.resolved(HOST, (HOST, 5), "worker-tub")  # this Tub attached before
        before = len(lines)
        assert [r.refused(HOST, tubid="guesser") for _ in range(1000)] == [False] * 1000
        assert r.refused(HOST, tubid="worker-tub") is True  # e.g. its FURL was rotated
        assert r.refused("198.51.100.1", tubid="guesser") is True  # another address
        assert len([e for e in lines[before:] if "refused" in str(e.get("log_format"))]) == 1
        assert r.describe()["cut_unanswered"] == 1000
        r.summarize()
        summary = [e for e in lines if "cut unanswered" in str(e.get("extra", ""))]
        assert len(summary) == 1
    finally:
        globalLogPublisher.removeObserver(lines.append)


def test_the_gate_off_admits_everything() -> None:
    r = Refusals(limit=0, clock=Clock())
    for _ in range(500):
        assert r.refused(HOST, tubid="guesser") is True
    assert r.admit(HOST, (HOST, 1), FakeConn([], "x")) == GO
