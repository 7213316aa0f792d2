"""The gate's admission of connections: an over-limit address (issue 15 item 2)
and every connection until it attaches (issue 16 item 2):
in turn, never shut out; unknown names cut unanswered; timed with task.Clock."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from buildbot_furl.master.admission import (
    ATTACH_TIMEOUT,
    FD_RESERVE,
    MAX_PENDING_CEILING,
    GateSettings,
    default_max_pending,
)
from buildbot_furl.master.refusals import (
    CLOSE,
    GO,
    PENDING_PER_ADDRESS,
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
    assert r.to_wire()["closed_before_tls"] == 3
    # a guesser's connection asks an unknown name: cut unanswered, and the
    # first held connection goes on (in order)
    assert r.refused(HOST, tubid="guesser", key=(HOST, 0)) is False
    assert events == [f"resume {PENDING_PER_ADDRESS}"]
    # a worker's connection names a valid FURL: the next goes on
    r.resolved(HOST, (HOST, 1), "worker")
    assert events[-1] == f"resume {PENDING_PER_ADDRESS + 1}"
    # one that never asks anything is aborted after ATTACH_TIMEOUT
    clock.advance(ATTACH_TIMEOUT)
    assert "abort 2" in events
    # a new interval: nothing is held any more
    r.summarize()
    assert r.admit(HOST, (HOST, 999), FakeConn(events, "late")) == GO
    assert r.to_wire()["waiting"] == 0


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
        assert r.to_wire()["cut_unanswered"] == 1000
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


# -- every connection to the workers' port (issue 16 item 2) -------------------------
def admission(clock: Clock, per_address: int = 4, max_pending: int = 10,
              nofile: int = 65536) -> Refusals:
    return Refusals(limit=100, clock=clock, nofile=nofile,
                    gate=GateSettings(max_pending=max_pending, per_address=per_address))


def test_idle_connections_are_cut_after_the_attach_timeout_and_free_their_places() -> None:
    clock = Clock()
    r = admission(clock, per_address=4)
    events: list[str] = []
    verdicts = [r.admit(HOST, (HOST, i), FakeConn(events, str(i))) for i in range(6)]
    # past the address's places the rest wait unread, in order: never closed for that
    assert verdicts == [GO] * 4 + [WAIT] * 2
    clock.advance(ATTACH_TIMEOUT - 0.1)
    assert events == []
    clock.advance(0.1)
    # the four that said nothing are cut, and the two held ones go on, with
    # a timeout of their own from now
    assert sorted(events) == [f"abort {i}" for i in range(4)] + ["resume 4", "resume 5"]
    assert r.to_wire()["connections"]["timed_out"] == 4
    clock.advance(ATTACH_TIMEOUT)
    assert events[-2:] == ["abort 4", "abort 5"]
    assert r.to_wire()["connections"]["pending"] == 0


def test_an_attach_ends_the_pending_and_an_attached_connection_never_counts() -> None:
    clock = Clock()
    r = admission(clock, per_address=2, max_pending=3)
    events: list[str] = []
    for i in range(3):
        r.admit(HOST, (HOST, i), FakeConn(events, str(i)))
    # 0 names a valid FURL: its place goes to 2; 0 starts its attach, which
    # takes longer than the timeout (Buildbot is busy): it is not cut
    r.resolved(HOST, (HOST, 0), "worker-tub")
    assert events == ["resume 2"]
    r.admission.attaching((HOST, 0))
    clock.advance(ATTACH_TIMEOUT * 3)
    assert "abort 0" not in events
    r.admission.attach_done((HOST, 0), True)
    d = r.to_wire()["connections"]
    assert d["attached"] == 1 and d["pending"] == 0  # 1 and 2 were cut meanwhile
    # attached connections leave room: three more are pending at once
    assert [r.admit("198.51.100.1", ("198.51.100.1", i), FakeConn(events, f"b{i}"))
            for i in range(3)] == [GO, GO, WAIT]
    # a failed attach gets the timeout again (the worker may try once more)
    r.resolved("198.51.100.1", ("198.51.100.1", 0), "w2")
    r.admission.attaching(("198.51.100.1", 0))
    r.admission.attach_done(("198.51.100.1", 0), False)
    clock.advance(ATTACH_TIMEOUT)
    assert "abort b0" in events
    r.closed(HOST, (HOST, 0))
    assert r.to_wire()["connections"]["attached"] == 0


def test_past_max_pending_the_busiest_address_loses_its_oldest_idle_connection() -> None:
    clock = Clock()
    r = admission(clock, per_address=4, max_pending=10)
    events: list[str] = []
    flood = "203.0.113.9"
    for i in range(8):  # a flood: 4 on their way, 4 held
        assert r.admit(flood, (flood, i), FakeConn(events, f"f{i}")) in (GO, WAIT)
        clock.advance(0.1)
    other = "198.51.100.2"
    assert r.admit(other, (other, 0), FakeConn(events, "o0")) == GO
    assert r.admit(other, (other, 1), FakeConn(events, "o1")) == GO
    assert events == []
    # full (10): each new connection, wherever from, evicts the flood's oldest
    worker = "192.0.2.50"
    assert r.admit(worker, (worker, 0), FakeConn(events, "w")) == GO
    assert events == ["abort f0", "resume f4"]
    for i in range(8, 20):
        r.admit(flood, (flood, i), FakeConn(events, f"f{i}"))
    d = r.to_wire()["connections"]
    assert d["pending"] == 10 and d["evicted"] == 13
    assert not any(e in events for e in ("abort o0", "abort o1", "abort w"))
    # the worker's connection names its FURL and attaches: it never lost its place
    r.resolved(worker, (worker, 0), "worker-tub")
    r.admission.attaching((worker, 0))
    r.admission.attach_done((worker, 0), True)
    assert r.to_wire()["connections"]["attached"] == 1


def test_when_every_pending_connection_named_a_furl_a_new_one_is_closed() -> None:
    clock = Clock()
    r = admission(clock, per_address=8, max_pending=16)
    events: list[str] = []
    for i in range(16):
        r.admit(HOST, (HOST, i), FakeConn(events, str(i)))
        r.resolved(HOST, (HOST, i), f"t{i}")
        r.admission.attaching((HOST, i))
    assert r.admit(HOST, (HOST, 99), FakeConn(events, "99")) == CLOSE
    assert events == [] and r.to_wire()["connections"]["evicted"] == 1


def test_a_known_tub_frees_its_place_at_tls_and_is_never_evicted() -> None:
    clock = Clock()
    r = admission(clock, per_address=1, max_pending=16)
    events: list[str] = []
    r.resolved(HOST, None, "worker-tub")  # it attached here before
    assert r.admit(HOST, (HOST, 0), FakeConn(events, "w")) == GO
    assert r.admit(HOST, (HOST, 1), FakeConn(events, "x")) == WAIT
    r.negotiated(HOST, (HOST, 0), "worker-tub")
    assert events == ["resume x"]  # the reconnecting worker's place went on
    for i in range(2, 40):
        r.admit(HOST, (HOST, i), FakeConn(events, str(i)))
    assert "abort w" not in events


def test_the_default_cap_leaves_the_descriptors_of_the_rest_of_the_master() -> None:
    assert default_max_pending(1024) == 384
    assert default_max_pending(65536) == MAX_PENDING_CEILING
    r = Refusals(clock=Clock(), nofile=1024)
    for i in range(500):  # 500 workers attached: the cap shrinks with them
        r.admit("w", ("w", i), FakeConn([], str(i)))
        r.admission.attaching(("w", i))
        r.admission.attach_done(("w", i), True)
    assert r.to_wire()["connections"]["max_pending"] == 1024 - FD_RESERVE - 500


def test_a_burst_of_honest_workers_from_one_address_all_get_in() -> None:
    """A restart: 2 000 workers on one host redial at once; none is closed."""
    clock = Clock()
    r = Refusals(clock=clock, nofile=65536)
    events: list[str] = []
    verdicts = [r.admit("127.0.0.1", i, FakeConn(events, str(i))) for i in range(2000)]
    assert CLOSE not in verdicts
    attached = 0
    while attached < 2000:
        going = [i for i in range(2000) if verdicts[i] == GO or f"resume {i}" in events]
        for i in going[attached:]:
            r.resolved("127.0.0.1", i, f"t{i}")
            r.admission.attaching(i)
            r.admission.attach_done(i, True)
            attached += 1
        clock.advance(0.5)
    assert not [e for e in events if e.startswith("abort")]
    assert r.to_wire()["connections"]["attached"] == 2000


def test_closings_are_logged_rationed() -> None:
    lines: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(lines.append)
    try:
        clock = Clock()
        r = admission(clock, per_address=64, max_pending=100)
        for i in range(1000):
            r.admit(f"127.0.{i % 7}.{i % 5}", i, FakeConn([], str(i)))
        clock.advance(ATTACH_TIMEOUT)
        r.summarize()
    finally:
        globalLogPublisher.removeObserver(lines.append)
    ours = [e for e in lines if "closed" in str(e.get("log_format", ""))]
    assert len(ours) == 3, ours  # the first of each kind, and one summary
    assert ours[-1]["t"] == 100 and ours[-1]["e"] == 900
