"""A worker's session on the master: its life as a state machine, and what
each transition means to the rest of the master, on a fake clock."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock

from buildbot_furl.errors import ConnectionLost
from buildbot_furl.master.registry import WorkerRegistry
from buildbot_furl.master.session import WorkerSession
from buildbot_furl.master.session_states import (
    ATTACHED,
    DETACHED,
    DRAINING,
    DRAINING_DETACHED,
    ENDED,
    SessionCore,
    SessionStates,
)
from buildbot_furl.protocol.messages import AttachInfo
from buildbot_furl.testing.fakes import FakeBot
from buildbot_furl.testing.fakes import run_at_once as _run

GRACE = 30.0


def _life(clock: Clock, over: list[int]) -> Any:
    return SessionStates(SessionCore(clock, GRACE, lambda: over.append(1)))


def _walk(life: Any, *inputs: str) -> list[Any]:
    return [getattr(life, i)(*(("admin",) if i == "drain" else ())) for i in inputs]


@pytest.mark.parametrize("path, states, answers", [
    (("link_lost",), [DETACHED], [None]),
    (("link_lost", "reattached"), [DETACHED, ATTACHED], [None, True]),
    (("reattached",), [ATTACHED], [True]),  # the worker noticed the cut first
    (("drain", "drain"), [DRAINING, DRAINING], [True, False]),
    (("link_lost", "drain", "reattached"), [DETACHED, DRAINING_DETACHED, DRAINING],
     [None, True, True]),
    (("drain", "link_lost", "link_lost", "reattached"),
     [DRAINING, DRAINING_DETACHED, DRAINING_DETACHED, DRAINING], [True, None, None, True]),
    (("end", "end", "link_lost", "reattached", "drain"), [ENDED] * 5,
     [True, False, None, False, False]),
    (("link_lost", "end"), [DETACHED, ENDED], [None, True]),
    (("drain", "link_lost", "end"), [DRAINING, DRAINING_DETACHED, ENDED], [True, None, True]),
])
def test_the_table(path: tuple[str, ...], states: list[str], answers: list[Any]) -> None:
    clock, over = Clock(), []
    life = _life(clock, over)
    assert life.state() == ATTACHED
    seen, got = [], []
    for step in path:
        got += _walk(life, step)
        seen.append(life.state())
    assert (seen, got) == (states, answers)
    # a timer runs exactly while the session is detached
    detached = life.state() in (DETACHED, DRAINING_DETACHED)
    assert len(clock.getDelayedCalls()) == (1 if detached else 0)
    assert over == []


def test_the_grace_timer_is_not_restarted_by_a_drain_or_a_second_loss() -> None:
    clock, over = Clock(), []
    life = _life(clock, over)
    life.link_lost()
    clock.advance(GRACE - 1)
    life.drain("admin")
    life.link_lost()
    clock.advance(0.999)
    assert over == []
    clock.advance(0.002)
    assert over == [1]


def _session(clock: Clock, grace: float = GRACE) -> tuple[WorkerSession, FakeBot]:
    bot = FakeBot()
    info = AttachInfo((1,), "test", {})
    return WorkerSession("w1", bot, info, 1, "127.0.0.1:4242", grace, clock=clock), bot


def _watch(session: WorkerSession) -> dict[str, list[Any]]:
    seen: dict[str, list[Any]] = {"link": [], "ended": []}
    session.add_link_listener(seen["link"].append)
    session.add_disconnect_callback(lambda: seen["ended"].append(session.state))
    return seen


def test_a_cut_keeps_the_session_for_its_grace_then_ends_it() -> None:
    clock = Clock()
    s, bot = _session(clock)
    seen = _watch(s)
    bot.lose()
    assert (s.state, s.attached, s.gone, s.detached_at) == (DETACHED, False, False, 0.0)
    assert seen == {"link": [False], "ended": []}
    waiting = s.wait_attached()
    clock.advance(GRACE - 0.001)
    assert not s.gone and not waiting.called
    clock.advance(0.001)
    assert s.gone and seen == {"link": [False], "ended": [ENDED]}
    assert waiting.called and isinstance(waiting.result.value, ConnectionLost)
    waiting.addErrback(lambda f: None)
    assert clock.getDelayedCalls() == []


@pytest.mark.parametrize("drain_first", [False, True])
def test_a_reattach_within_grace_resumes_and_cancels_the_timer(drain_first: bool) -> None:
    clock = Clock()
    s, bot = _session(clock)
    seen = _watch(s)
    if drain_first:
        assert s.drain("the admin") and not s.drain("again")
    bot.lose()
    clock.advance(GRACE / 2)
    waiting = s.wait_attached()
    new = FakeBot()
    d = _run(s.rebind(new, "127.0.0.1:5555"))
    assert d == [] and waiting.called and waiting.result is None
    assert s.state == (DRAINING if drain_first else ATTACHED) and s.attached
    assert s.draining == ("the admin" if drain_first else None)
    assert s.bot is new and s.peer == "127.0.0.1:5555" and s.detached_at is None
    assert seen == {"link": [False, True], "ended": []}
    assert clock.getDelayedCalls() == []
    bot.lose()  # the old connection's late notice changes nothing
    assert s.attached


def test_a_worker_back_before_the_master_saw_the_cut_is_a_cut_and_a_return() -> None:
    clock = Clock()
    s, bot = _session(clock)
    seen = _watch(s)
    _run(s.rebind(FakeBot(), "127.0.0.1:5555"))
    assert seen == {"link": [False, True], "ended": []} and s.state == ATTACHED


def test_without_grace_a_cut_ends_the_session_at_once() -> None:
    clock = Clock()
    s, bot = _session(clock, grace=0.0)  # as while attaching: no grace yet
    seen = _watch(s)
    bot.lose()
    assert s.gone and seen == {"link": [], "ended": [ENDED]}
    assert clock.getDelayedCalls() == []


def test_drop_ends_once_and_end_listeners_hear_it_once() -> None:
    clock = Clock()
    s, bot = _session(clock)
    seen = _watch(s)
    bot.lose()
    s.drop("revoked")
    s.drop("revoked again")
    s.end("and again")
    assert seen["ended"] == [ENDED] and clock.getDelayedCalls() == []


def test_the_registry_marks_a_drain_once_and_names_who_asked(tmp_path: Any) -> None:
    """The registry asks the session; it writes none of its fields."""
    clock = Clock()
    s, _ = _session(clock)
    reg = WorkerRegistry.__new__(WorkerRegistry)  # only drain() is used
    reg.on_drain = lambda session: 3
    assert reg.drain(s, "the master's admin") == 3
    assert reg.drain(s, "its admin, from the worker") == 3
    assert s.draining == "the master's admin" and s.state == DRAINING
