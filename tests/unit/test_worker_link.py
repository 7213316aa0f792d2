"""The worker's link as a state machine, on a task.Clock: a fake dialer and
fake login objects answered by hand; no reactor time passes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from foolscap.api import Violation
from twisted.internet.task import Clock

from buildbot_furl.errors import ConnectionLost, DuplicateWorker, Revoked
from buildbot_furl.furl import new_swissnum, parse_furl
from buildbot_furl.layout import WorkerPaths
from buildbot_furl.testing.fakelink import FakeDialer, FakeLogin, attach_answer
from buildbot_furl.worker.link import ORPHAN_MARGIN, STABLE_AFTER
from buildbot_furl.worker.service import WorkerService


def no_jitter(mean: float, sigma: float) -> float:
    return mean


class Rig:
    """A WorkerService whose link dials a FakeDialer on a Clock."""

    def __init__(self, tmp: Path, maxretries: int = 0) -> None:
        self.clock = Clock()
        self.dialer = FakeDialer()
        self.furl = parse_furl(f"pb://{'a' * 32}@tcp:127.0.0.1:1/{new_swissnum()}")
        self.svc = WorkerService(WorkerPaths(str(tmp)), self.furl, maxretries=maxretries,
                                 clock=self.clock, dial=self.dialer)
        self.svc.core.backoff.rng = no_jitter
        self.gave_up: list[str] = []
        self.svc.on_give_up = self.gave_up.append
        self.stopped: list[bool] = []
        self.svc.stop_process = lambda: self.stopped.append(True)
        self.svc.link.start()

    @property
    def state(self) -> str:
        return self.svc.state

    def file(self) -> dict[str, Any]:
        return json.loads(Path(self.svc.paths.state).read_text())

    def attach(self, **answer: Any) -> FakeLogin:
        """Answer the dial that is out, then its attach."""
        login = self.dialer.connect()
        assert self.state == "attaching" and login.methods() == ["attach"]
        login.answer("attach", attach_answer(**answer))
        return login

    def delay(self) -> float:
        """The wait before the next dial (the one timer that is not the
        backoff's own STABLE_AFTER nor an orphan's)."""
        timer = self.svc.core.retry_timer
        assert timer is not None and timer.active()
        return round(timer.getTime() - self.clock.seconds(), 6)


class RunningCommand:
    """Stands in for a FurlProtocolCommand: records how it ended."""

    def __init__(self) -> None:
        self.ended: list[Exception] = []
        self.is_complete = False

    def end(self, why: Exception) -> None:
        self.ended.append(why)


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


def test_connect_attach_attached(rig: Rig) -> None:
    assert rig.state == "connecting" and len(rig.dialer.dials) == 1
    assert rig.dialer.dials[0][0] == str(rig.furl)
    rig.attach(grace=30.0, name="w7")
    assert rig.state == "attached"
    assert rig.svc.login is not None and rig.svc.session is not None
    assert rig.svc.grace == 30.0 and rig.svc.name == "w7" and rig.svc.failures == 0
    st = rig.file()
    assert st["state"] == "attached" and st["last_error"] is None and st["name"] == "w7"


def test_failed_dials_back_off_by_the_policy(rig: Rig) -> None:
    waits = []
    for _ in range(8):
        rig.dialer.refuse()
        assert rig.state == "waiting"
        waits.append(rig.delay())
        rig.clock.advance(rig.delay())
        assert rig.state == "connecting"
    assert waits == [1, 2, 4, 8, 16, 32, 60, 60]
    assert rig.svc.failures == 8
    assert "connection refused" in rig.file()["last_error"]


def test_a_refused_attach_is_a_failed_attempt_and_hangs_up(rig: Rig) -> None:
    rig.dialer.refuse()
    rig.clock.advance(rig.delay())  # 1 s
    login = rig.dialer.connect()
    login.refuse("attach", DuplicateWorker("another worker is attached with this FURL"))
    # the second failed attempt in a row: it waits as the policy says, and the
    # worker hangs up itself (the master's hang-up is not counted again)
    assert rig.state == "waiting" and login.severed and rig.delay() == 2
    assert rig.svc.failures == 2 and len(rig.dialer.dials) == 2
    rig.clock.advance(1.999)
    assert len(rig.dialer.dials) == 2
    rig.clock.advance(0.001)
    assert rig.state == "connecting" and len(rig.dialer.dials) == 3


def test_a_link_dropped_right_after_the_attach_is_a_failed_attempt(rig: Rig) -> None:
    delays = []
    for _ in range(4):
        login = rig.attach()
        rig.clock.advance(0.2)
        login.cut()
        assert rig.state == "waiting"
        delays.append(rig.delay())
        rig.clock.advance(rig.delay())
    assert delays == [0, 1, 2, 4]  # a lone drop is redialed at once
    login = rig.attach()
    rig.clock.advance(STABLE_AFTER)
    login.cut()
    assert rig.delay() == 0 and rig.svc.core.backoff.attempts == 0


def test_a_cut_while_attached_waits_within_grace_and_resumes(rig: Rig) -> None:
    login = rig.attach(grace=8.0)
    sid = rig.svc.session
    cmd = RunningCommand()
    rig.svc.bot.commands[("b", "c1")] = cmd  # type: ignore[assignment]
    rig.clock.advance(STABLE_AFTER)
    login.cut()
    assert rig.state == "waiting" and rig.delay() == 0
    assert rig.file()["last_error"] == "lost the connection to the master"
    rig.clock.advance(0)
    for _ in range(5):  # the master is away: no wait longer than grace/4
        rig.dialer.refuse()
        assert rig.delay() <= 2.0
        rig.clock.advance(rig.delay())
    again = rig.dialer.connect()
    # the reattach presents the session the master gave
    assert again.calls[0][0] == "attach"
    again.answer("attach", attach_answer(resumed=True, commands=("c1",), session=sid,
                                         grace=8.0))
    assert rig.state == "attached" and rig.svc.session == sid and not cmd.ended
    assert rig.svc.bot.commands  # carried on
    assert not rig.svc.core.orphan_timer


def test_grace_expiry_ends_the_orphaned_commands(rig: Rig) -> None:
    login = rig.attach(grace=20.0)
    cmd = RunningCommand()
    rig.svc.bot.commands[("b", "c1")] = cmd  # type: ignore[assignment]
    rig.clock.advance(STABLE_AFTER)
    login.cut()
    rig.clock.advance(0)  # redial at once; the master never answers
    rig.clock.advance(20.0 + ORPHAN_MARGIN - 0.001)
    assert not cmd.ended
    rig.clock.advance(0.001)
    assert len(cmd.ended) == 1 and rig.svc.session is None and not rig.svc.bot.commands
    assert "no master took the session back" in str(cmd.ended[0])


def test_a_fresh_session_after_a_cut_ends_the_old_commands(rig: Rig) -> None:
    login = rig.attach()
    cmd = RunningCommand()
    rig.svc.bot.commands[("b", "c1")] = cmd  # type: ignore[assignment]
    rig.clock.advance(STABLE_AFTER)
    login.cut()
    rig.clock.advance(0)
    rig.attach()  # the master restarted: a new session
    assert len(cmd.ended) == 1 and not rig.svc.core.orphan_timer


@pytest.mark.parametrize("answer", ["accepted", "unsupported"])
def test_drain_asked_while_attached(rig: Rig, answer: str) -> None:
    login = rig.attach()
    rig.svc.request_drain()
    assert rig.state == "draining" and rig.file()["drain"] == "asked"
    if answer == "accepted":
        login.answer("drain", {"running": 2})
        assert rig.state == "draining"
    else:
        login.fail("drain", Violation("method 'drain' not defined in RIWorkerLogin"))
        assert rig.state == "attached"
    assert rig.svc.drain == answer and rig.file()["drain"] == answer
    rig.svc.request_drain()  # asked already: not sent again
    assert login.methods().count("drain") == 1


def test_drain_asked_while_away_is_sent_at_the_next_attach(rig: Rig) -> None:
    rig.svc.bot.commands[("b", "c1")] = RunningCommand()  # type: ignore[assignment]
    rig.svc.request_drain()
    assert rig.state == "connecting" and not rig.stopped
    login = rig.attach()
    assert rig.state == "draining" and login.methods() == ["attach", "drain"]
    login.answer("drain", {"running": 1})
    rig.clock.advance(STABLE_AFTER)
    login.cut()  # accepted, then cut: a resumed session keeps draining unasked
    rig.clock.advance(0)
    again = rig.dialer.connect()
    again.answer("attach", attach_answer(resumed=True, commands=("c1",),
                                         session=rig.svc.session))
    assert rig.state == "draining" and again.methods() == ["attach"]


def test_drain_with_nothing_running_and_no_link_stops_now(rig: Rig) -> None:
    rig.svc.request_drain()
    assert rig.stopped == [True]


def test_drain_lost_with_the_link_is_asked_again(rig: Rig) -> None:
    login = rig.attach()
    rig.svc.request_drain()
    login.cut()
    assert rig.svc.drain == "asked" and rig.state == "waiting"
    rig.clock.advance(rig.delay())
    again = rig.attach()
    assert again.methods() == ["attach", "drain"]


def test_gives_up_after_maxretries(tmp_path: Path) -> None:
    rig = Rig(tmp_path, maxretries=3)
    rig.dialer.refuse()
    rig.clock.advance(rig.delay())
    login = rig.dialer.connect()
    login.refuse("attach", ConnectionLost("connection lost during attach"))
    rig.clock.advance(rig.delay())
    assert not rig.gave_up and rig.svc.failures == 2
    rig.dialer.refuse(ConnectionLost("connection refused"))
    assert rig.state == "gave up"
    assert rig.gave_up == ["connection refused; 3 failed attempts in a row (maxretries 3)"]
    assert not rig.clock.getDelayedCalls()
    rig.svc.link.stop()
    assert rig.state == "stopped"


def test_a_duplicate_after_an_unanswered_attach_of_ours_is_not_fatal(rig: Rig) -> None:
    """At start-up "the name is taken" means another worker holds it, unless
    an attach of ours lost its link before the answer: then the master may be
    holding ours (seen in CI: the worker gave up at start, as a duplicate of
    itself)."""
    events: list[tuple[bool, str, bool]] = []
    rig.svc.on_event = lambda ok, msg, fatal: events.append((ok, msg, fatal))
    rig.dialer.connect().refuse("attach", ConnectionLost("connection lost during attach"))
    rig.clock.advance(rig.delay())
    rig.dialer.connect().refuse("attach", DuplicateWorker("worker 'w1' is attaching from "
                                                          "elsewhere right now"))
    assert [fatal for _ok, _msg, fatal in events] == [False, False]
    assert rig.state == "waiting"


def test_a_fatal_refusal_is_reported_fatal(rig: Rig) -> None:
    events: list[tuple[bool, str, bool]] = []
    rig.svc.on_event = lambda ok, msg, fatal: events.append((ok, msg, fatal))
    login = rig.dialer.connect()
    login.refuse("attach", Revoked("this worker's FURL was revoked"))
    assert events == [(False, "this worker's FURL was revoked", True)]


def test_a_late_answer_after_a_switch_is_ignored(rig: Rig) -> None:
    new = parse_furl(f"pb://{'b' * 32}@tcp:127.0.0.1:2/{new_swissnum()}")
    login = rig.dialer.connect()  # attaching to the old FURL
    assert rig.svc.switch_furl(new)
    assert rig.state == "connecting" and rig.dialer.dials[-1][0] == str(new)
    assert login.severed
    assert rig.svc.furl is new and rig.file()["last_error"] is None


def _to_attaching(rig: Rig) -> None:
    rig.dialer.connect()


def _to_attached(rig: Rig) -> None:
    rig.attach()


def _to_waiting_with_orphans(rig: Rig) -> None:
    login = rig.attach()
    rig.svc.bot.commands[("b", "c1")] = RunningCommand()  # type: ignore[assignment]
    login.cut()


def _to_draining(rig: Rig) -> None:
    rig.attach()
    rig.svc.request_drain()


def _to_gave_up(rig: Rig) -> None:
    rig.svc.core.maxretries = 1
    rig.dialer.refuse()


@pytest.mark.parametrize("reach, state", [
    (lambda rig: None, "connecting"),
    (_to_attaching, "attaching"),
    (_to_attached, "attached"),
    (_to_waiting_with_orphans, "waiting"),
    (_to_draining, "draining"),
    (_to_gave_up, "gave up"),
])
def test_stop_from_every_state_cancels_every_timer(rig: Rig, reach: Any, state: str) -> None:
    reach(rig)
    assert rig.state == state
    login = rig.svc.core.login
    rig.svc.link.stop()
    assert rig.state == "stopped" and not rig.clock.getDelayedCalls()
    assert login is None or login.severed
    rig.clock.advance(3600)  # nothing fires, nothing dials
    assert rig.state == "stopped"
    assert all(d.called for _, d in rig.dialer.dials)
